//! Feeding latest views from Kafka: [`Applier`] turns a batch of messages into state changes (decode, key, event
//! time, tombstones); [`follow`] is the background consumer that keeps a view fresh and tracks its freshness;
//! [`replay`] rebuilds the state as known at a past time from the log (time travel on a latest view).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampNanosecondType};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::state::{Entry, LatestState};
use super::view::LatestView;
use crate::codec::MessageDecoder;
use crate::error::{KfsqlError, Result};
use crate::kafka::{KfsqlConsumer, KfsqlContext};

/// One message as read, before decoding.
pub struct Raw {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub partition: i32,
    pub offset: i64,
    pub ts_ms: Option<i64>,
}

impl Raw {
    pub fn from_message<M: Message>(m: &M) -> Self {
        Raw {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            partition: m.partition(),
            offset: m.offset(),
            ts_ms: m.timestamp().to_millis(),
        }
    }
}

/// What applying a batch did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    pub messages: u64,
    pub tombstones: u64,
    pub bad: u64,
    /// The newest event time among the values applied (ns).
    pub newest_event_ns: Option<i64>,
}

/// Decodes messages of one table and applies them to a state.
#[derive(Debug, Clone)]
pub struct Applier {
    pub decoder: MessageDecoder,
    /// Index of the key column in the decoded payload.
    pub key_index: usize,
    /// Index of the event-time column, if the table declares one.
    pub time_index: Option<usize>,
}

impl Applier {
    /// Apply `msgs` (in the order they were read) to `state`; payloads move into the state without a copy.
    pub fn apply(&self, msgs: Vec<Raw>, state: &mut LatestState) -> Applied {
        let mut out = Applied { messages: msgs.len() as u64, ..Default::default() };
        let keep_keys = self.decoder.needs_keys();
        let rows = {
            let with_value = || msgs.iter().filter(|m| m.payload.is_some());
            let payloads: Vec<&[u8]> = with_value().filter_map(|m| m.payload.as_deref()).collect();
            let keys: Vec<Option<&[u8]>> =
                if keep_keys { with_value().map(|m| m.key.as_deref()).collect() } else { Vec::new() };
            self.decode(&keys, &payloads, &mut out.bad)
        };
        let mut rows = rows.into_iter();
        for m in msgs {
            let Some(payload) = m.payload else {
                out.tombstones += 1;
                if let Some(k) = &m.key {
                    state.delete(&self.decoder.key_format().key_text(k));
                }
                continue;
            };
            let Some((key, event_ns)) = rows.next().flatten() else { continue };
            let event_ns = match (self.time_index, event_ns) {
                (None, _) => m.offset, // no event time declared: arrival order decides
                (Some(_), Some(t)) => t,
                (Some(_), None) => {
                    out.bad += 1; // a value without its event time cannot be ordered
                    continue;
                }
            };
            out.newest_event_ns = out.newest_event_ns.max(Some(event_ns));
            let entry = Entry {
                event_ns,
                offset: m.offset,
                partition: m.partition,
                ts_ms: m.ts_ms.unwrap_or(super::state::NO_TIMESTAMP),
                payload: payload.into_boxed_slice(),
                key: if keep_keys { m.key.map(Vec::into_boxed_slice) } else { None },
            };
            state.upsert(&key, entry);
        }
        out
    }

    /// Per payload: its key text and event time, or None when it does not decode (counted in `bad`).
    fn decode(&self, keys: &[Option<&[u8]>], payloads: &[&[u8]], bad: &mut u64) -> Vec<Option<(String, Option<i64>)>> {
        if payloads.is_empty() {
            return Vec::new();
        }
        match self.decoder.decode(keys, payloads) {
            Ok(d) => {
                *bad += d.bad.total();
                let keys = cast(d.batch.column(self.key_index), &DataType::Utf8).ok();
                let times = self
                    .time_index
                    .and_then(|i| cast(d.batch.column(i), &DataType::Timestamp(TimeUnit::Nanosecond, None)).ok());
                let (Some(keys), rows) = (keys, d.batch.num_rows()) else { return vec![None; payloads.len()] };
                let keys = keys.as_string::<i32>();
                let times = times.as_ref().map(|t| t.as_primitive::<TimestampNanosecondType>());
                let mut decoded = (0..rows).map(|r| {
                    if keys.is_null(r) {
                        return None;
                    }
                    let t = times.and_then(|t| (!t.is_null(r)).then(|| t.value(r)));
                    Some((keys.value(r).to_string(), t))
                });
                match &d.keep {
                    // rows exist only for the kept payloads
                    Some(keep) => (0..payloads.len())
                        .map(|i| if keep.value(i) { decoded.next().flatten() } else { None })
                        .collect(),
                    None => decoded.collect(),
                }
            }
            // bad_messages = 'fail' stops scans, but a view must keep following: skip the bad ones
            Err(_) => payloads
                .iter()
                .enumerate()
                .map(|(i, p)| match self.decode(keys.get(i..=i).unwrap_or(&[]), &[p], &mut 0) {
                    v if v.first().is_some_and(Option::is_some) => v.into_iter().next().flatten(),
                    _ => {
                        *bad += 1;
                        None
                    }
                })
                .collect(),
        }
    }
}

const MAX_BATCH: usize = 4096;

fn assign_all(consumer: &KfsqlConsumer, topic: &str, partitions: i32) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(|e| KfsqlError::Kafka(e.to_string()))?;
    }
    consumer.assign(&tpl).map_err(|e| KfsqlError::Kafka(format!("assigning {topic}: {e}")))
}

/// The topic's partition count, asked until the brokers answer with at least one partition; None once the view is
/// stopped.
fn partition_count(view: &LatestView, consumer: &KfsqlConsumer) -> Option<i32> {
    while !view.stopped.load(Ordering::Relaxed) {
        match consumer.fetch_metadata(Some(&view.topic), Duration::from_secs(5)) {
            Ok(m) => match m.topics().first().map_or(0, |t| t.partitions().len()) {
                0 => view.fresh.set_error(format!("topic '{}' has no partitions (yet)", view.topic)),
                n => return Some(n as i32),
            },
            Err(e) => view.fresh.set_error(format!("metadata of '{}': {e}", view.topic)),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    None
}

/// Follow the view's topic from its beginning until the view is stopped. Runs on its own thread.
pub fn follow(view: Arc<LatestView>, config: ClientConfig) {
    let topic = view.topic.clone();
    let consumer: KfsqlConsumer = match config
        .clone()
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "1")
        .create_with_context(KfsqlContext)
    {
        Ok(c) => c,
        Err(e) => return view.fresh.set_error(format!("cannot create the view's consumer: {e}")),
    };
    let Some(partitions) = partition_count(&view, &consumer) else { return };
    if let Err(e) = assign_all(&consumer, &topic, partitions) {
        return view.fresh.set_error(e.to_string());
    }
    let n = partitions as usize;
    // where the view must get to before it is ready: the high watermarks when it started
    let mut start_highs: Option<Vec<i64>> = None;
    let mut next = vec![0i64; n];
    let mut at_end = vec![false; n];
    let mut batch: Vec<Raw> = Vec::with_capacity(MAX_BATCH);
    let long_ago = || Instant::now().checked_sub(Duration::from_secs(60)).unwrap_or_else(Instant::now);
    let mut last_housekeeping = long_ago();
    let mut last_probe = long_ago();
    while !view.stopped.load(Ordering::Relaxed) {
        if start_highs.is_none() {
            let highs: std::result::Result<Vec<i64>, KafkaError> = (0..partitions)
                .map(|p| consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)).map(|(_, h)| h))
                .collect();
            match highs {
                Ok(h) => start_highs = Some(h),
                Err(e) => {
                    view.fresh.set_error(format!("reading the watermarks of {topic}: {e}"));
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
        }
        // block for the first message, then take what is already there
        let mut timeout = Duration::from_millis(100);
        while batch.len() < MAX_BATCH {
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => {
                    let p = m.partition() as usize;
                    if p < n {
                        next[p] = m.offset() + 1;
                        at_end[p] = false;
                    }
                    batch.push(Raw::from_message(&m));
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(e) = at_end.get_mut(p as usize) {
                        *e = true;
                        // at the end: the high watermark (also when retention removed everything before it)
                        let high = cached_high_watermark(&consumer, &topic, p).unwrap_or(0);
                        next[p as usize] = next[p as usize].max(high);
                    }
                }
                Some(Err(e)) => {
                    view.fresh.set_error(format!("reading {topic}: {e}"));
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        if !batch.is_empty() {
            let msgs = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            let applied = {
                let mut state = view.state.write().unwrap_or_else(|p| p.into_inner());
                view.applier.apply(msgs, &mut state)
            };
            view.fresh.applied(&applied);
        }
        let lag: i64 = (0..partitions)
            .map(|p| {
                let high = cached_high_watermark(&consumer, &topic, p).unwrap_or(-1);
                (high - next[p as usize]).max(0)
            })
            .sum();
        view.fresh.lag.store(lag, Ordering::Relaxed);
        // Caught up means: at the end of every partition, and the broker just confirmed there is nothing newer. The
        // confirmation (one ListOffsets, once a second) is what makes staleness grow while the brokers are away.
        if at_end.iter().all(|e| *e) && last_probe.elapsed() > Duration::from_secs(1) {
            last_probe = Instant::now();
            match consumer.fetch_watermarks(&topic, 0, Duration::from_millis(500)) {
                Ok((_, high)) if high <= next[0] => view.fresh.caught_up(),
                Ok(_) => at_end[0] = false,
                Err(e) => view.fresh.set_error(format!("{topic} unreachable, serving the last values: {e}")),
            }
        }
        if !view.ready.load(Ordering::Relaxed)
            && let Some(highs) = &start_highs
        {
            let reached = highs.iter().zip(&next).zip(&at_end).all(|((h, n), end)| *end || n >= h);
            if reached {
                view.mark_ready();
            }
        }
        if last_housekeeping.elapsed() > Duration::from_secs(5) {
            last_housekeeping = Instant::now();
            view.evict_expired();
        }
    }
}

/// The high watermark of a partition as the consumer last saw it in a fetch response (no request to the broker).
/// rdkafka 0.39 does not wrap librdkafka's `rd_kafka_get_watermark_offsets`, so it is called directly.
fn cached_high_watermark(consumer: &KfsqlConsumer, topic: &str, partition: i32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime; librdkafka only reads `topic` and writes the
    // two out-parameters, which live on this stack frame.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// The state of the view's topic as known at `at_ms` (only messages with a Kafka timestamp at or before it), read from
/// the log up to the current high watermarks. Blocking.
pub fn replay(
    applier: &Applier,
    config: &ClientConfig,
    topic: &str,
    ranges: &[(i32, i64, i64)],
    at_ms: i64,
    stall: Duration,
) -> Result<LatestState> {
    let mut state = LatestState::default();
    let consumer: KfsqlConsumer = config
        .create_with_context(KfsqlContext)
        .map_err(|e| KfsqlError::Kafka(format!("cannot create a consumer: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    for &(p, low, high) in ranges {
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low)).map_err(|e| KfsqlError::Kafka(e.to_string()))?;
        }
    }
    let mut remaining: std::collections::HashMap<i32, i64> =
        ranges.iter().filter(|(_, l, h)| h > l).map(|&(p, _, h)| (p, h)).collect();
    if remaining.is_empty() {
        return Ok(state);
    }
    consumer.assign(&tpl).map_err(|e| KfsqlError::Kafka(format!("assigning {topic}: {e}")))?;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                if last_progress.elapsed() > stall {
                    return Err(KfsqlError::Kafka(format!("no data from {topic} for {stall:?}; is the broker up?")));
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) if crate::kafka::is_transient(&e) && last_progress.elapsed() <= stall => {}
            Some(Err(e)) => return Err(KfsqlError::Kafka(format!("reading {topic}: {e}"))),
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let p = m.partition();
                let Some(&end) = remaining.get(&p) else { continue };
                if m.offset() >= end {
                    remaining.remove(&p);
                    continue;
                }
                if m.offset() + 1 >= end {
                    remaining.remove(&p);
                }
                if m.timestamp().to_millis().is_some_and(|t| t <= at_ms) {
                    batch.push(Raw::from_message(&m));
                }
                if batch.len() >= MAX_BATCH {
                    applier.apply(std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH)), &mut state);
                }
            }
        }
    }
    applier.apply(batch, &mut state);
    Ok(state)
}
