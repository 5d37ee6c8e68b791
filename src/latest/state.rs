//! The in-memory state of one latest view: per key, the newest value by event time (ties: greatest offset, then
//! partition), kept as the raw message payload so that a key costs little more than its message. Tombstones delete.
//!
//! The map is an `IndexMap`: entries sit densely in one vector and the hash table holds only their indices, so the
//! table's spare capacity costs 9 bytes a slot rather than a whole entry.

/// `Entry::ts_ms` of a message without a timestamp.
pub const NO_TIMESTAMP: i64 = i64::MIN;

/// The value a key currently has.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Event time in nanoseconds (the offset order stands in when the table declares no event time).
    pub event_ns: i64,
    pub offset: i64,
    pub partition: i32,
    /// Kafka timestamp (arrival), milliseconds; [`NO_TIMESTAMP`] when the message had none.
    pub ts_ms: i64,
    /// The JSON payload, exactly as in Kafka.
    pub payload: Box<[u8]>,
    /// The message key, kept only when the table reads columns from it (a Kafka Streams windowed key).
    pub key: Option<Box<[u8]>>,
}

impl Entry {
    pub fn timestamp_ms(&self) -> Option<i64> {
        (self.ts_ms != NO_TIMESTAMP).then_some(self.ts_ms)
    }

    /// The order "newest value wins" uses: event time, then offset, then partition (DESIGN.md "Latest view").
    fn rank(&self) -> (i64, i64, i32) {
        (self.event_ns, self.offset, self.partition)
    }
}

/// Key → its newest value.
#[derive(Debug, Default)]
pub struct LatestState {
    map: indexmap::IndexMap<Box<str>, Entry, ahash::RandomState>,
    payload_bytes: usize,
}

impl LatestState {
    /// Apply a value for `key`; returns whether it became the key's value.
    pub fn upsert(&mut self, key: &str, entry: Entry) -> bool {
        match self.map.get_mut(key) {
            Some(old) if old.rank() >= entry.rank() => false,
            Some(old) => {
                self.payload_bytes = self.payload_bytes + entry.payload.len() - old.payload.len();
                *old = entry;
                true
            }
            None => {
                self.payload_bytes += entry.payload.len();
                self.map.insert(key.into(), entry);
                true
            }
        }
    }

    /// A tombstone: the key is gone, whatever event time its value had.
    pub fn delete(&mut self, key: &str) -> bool {
        match self.map.swap_remove(key) {
            Some(old) => {
                self.payload_bytes -= old.payload.len();
                true
            }
            None => false,
        }
    }

    /// Drop values whose event time is before `min_event_ns` (expired by the TTL); returns how many.
    pub fn evict_older_than(&mut self, min_event_ns: i64) -> usize {
        let before = self.map.len();
        let mut freed = 0;
        self.map.retain(|_, e| {
            let keep = e.event_ns >= min_event_ns;
            if !keep {
                freed += e.payload.len();
            }
            keep
        });
        self.payload_bytes -= freed;
        before - self.map.len()
    }

    /// Give back spare capacity (after the initial load: a feature table's key set is mostly stable from there).
    pub fn shrink_to_fit(&mut self) {
        self.map.shrink_to_fit();
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.map.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.map.iter().map(|(k, e)| (k.as_ref(), e))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Payload bytes held (what the messages themselves weigh).
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// An estimate of the memory held: the table's slots plus each key's and payload's heap allocation (rounded up to
    /// the allocator's 16-byte granularity).
    pub fn memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Box<str>, Entry)>() + 1;
        let round = |n: usize| n.div_ceil(16) * 16;
        self.map.capacity() * slot
            + self.map.iter().map(|(k, e)| round(k.len()) + round(e.payload.len())).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(event_ns: i64, offset: i64, payload: &str) -> Entry {
        Entry { event_ns, offset, partition: 0, ts_ms: NO_TIMESTAMP, payload: payload.as_bytes().into(), key: None }
    }

    #[test]
    fn newest_event_time_wins_then_greatest_offset_and_tombstones_delete() {
        let mut s = LatestState::default();
        assert!(s.upsert("u1", e(10, 0, "a")));
        assert!(!s.upsert("u1", e(5, 1, "late but older")), "an older event time never replaces a newer one");
        assert_eq!(&*s.get("u1").unwrap().payload, b"a");
        assert!(s.upsert("u1", e(10, 2, "tie")), "equal event time: the greater offset wins");
        assert!(!s.upsert("u1", e(10, 1, "tie, older offset")));
        assert_eq!(&*s.get("u1").unwrap().payload, b"tie");
        assert_eq!(s.payload_bytes(), 3);
        assert!(s.delete("u1"));
        assert!(s.get("u1").is_none() && s.is_empty() && s.payload_bytes() == 0);
        assert!(s.upsert("u1", e(1, 3, "after the tombstone")), "a value after a tombstone comes back");
        s.upsert("u2", e(100, 0, "new"));
        assert_eq!(s.evict_older_than(50), 1);
        assert!(s.get("u1").is_none() && s.get("u2").is_some());
    }
}
