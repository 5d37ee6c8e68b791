//! JSON → Arrow decode throughput (rows/s) of the codec scans use, on the fraud example's transactions:
//! the fast path (all messages good) and a batch with one bad message (the slow path).
//!
//!     cargo bench --bench decode

use std::time::Duration;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use kfsql::codec::{BadMessagePolicy, JsonDecoder};

/// The allocator the `kfsql` binary uses (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn payloads(n: usize) -> Vec<Vec<u8>> {
    kfsql::demo::generate(n, 1000, Duration::from_secs(3600), Utc::now(), 1)
        .iter()
        .map(|t| serde_json::to_vec(t).expect("json"))
        .collect()
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("txn_id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("merchant", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("event_time", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
    ])
}

fn bench(c: &mut Criterion) {
    let batch = 8192;
    let good = payloads(batch);
    let mut one_bad = good.clone();
    one_bad[batch / 2] = b"{not json".to_vec();
    let decoder = JsonDecoder::new(&schema(), BadMessagePolicy::Skip);
    let mut g = c.benchmark_group("json_decode");
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function("fraud_txn_8192_good", |b| b.iter(|| decoder.decode(&good).expect("decode").batch.num_rows()));
    g.bench_function("fraud_txn_8192_one_bad", |b| {
        b.iter(|| decoder.decode(&one_bad).expect("decode").batch.num_rows())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
