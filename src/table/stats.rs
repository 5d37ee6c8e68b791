//! Per-table counters that scans update and `kfsql.table_stats` shows: messages read, bad messages (by reason, as
//! `/metrics` shows them; their sum in `kfsql.table_stats`), tombstones, and messages found in a partition their key
//! does not hash to (a sign the declared partitioner is wrong).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::BadCounts;

#[derive(Debug, Default)]
pub struct TableStats {
    pub scans: AtomicU64,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    /// Bad messages by reason, in the order of [`BadCounts::REASONS`].
    pub bad_by_reason: [AtomicU64; 4],
    pub tombstones: AtomicU64,
    pub misrouted: AtomicU64,
}

/// A point-in-time copy of [`TableStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub scans: u64,
    pub messages: u64,
    pub bytes: u64,
    /// All bad messages: the sum of `bad_by_reason`.
    pub bad_messages: u64,
    pub bad_by_reason: [u64; 4],
    pub tombstones: u64,
    pub misrouted: u64,
}

impl TableStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let bad_by_reason: [u64; 4] = std::array::from_fn(|i| self.bad_by_reason[i].load(Ordering::Relaxed));
        StatsSnapshot {
            scans: self.scans.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            bad_messages: bad_by_reason.iter().sum(),
            bad_by_reason,
            tombstones: self.tombstones.load(Ordering::Relaxed),
            misrouted: self.misrouted.load(Ordering::Relaxed),
        }
    }

    /// Count a decoded batch's bad messages by reason.
    pub fn add_bad(&self, bad: &BadCounts) {
        for (counter, n) in self.bad_by_reason.iter().zip(bad.by_reason()) {
            self.add(counter, n);
        }
    }

    pub fn add(&self, counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}
