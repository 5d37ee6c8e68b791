#!/usr/bin/env bash
# Scan throughput vs. a raw rdkafka consume of the same topic, printed as a ratio (see benches/scan.rs).
#   scripts/bench-scan.sh                         # embedded Kafka, 1M messages
#   KFSQL_BENCH_BROKERS=127.0.0.1:9092 scripts/bench-scan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench scan
