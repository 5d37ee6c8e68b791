#!/usr/bin/env bash
# ASOF JOIN: kfsql vs DuckDB on the same Parquet files, in one run; then the same join with the feature rows read
# from Kafka (and with labels from Kafka too, joined partition-wise), each against the same DuckDB time.
# 1M label rows x 10M feature rows over 100k keys (override with LABELS / FEATURES / KEYS).
#   scripts/bench-asof.sh                            # embedded Kafka (mock cluster over loopback)
#   KFSQL_BENCH_BROKERS=host:port scripts/bench-asof.sh
#   KFSQL_BENCH_KAFKA=0 scripts/bench-asof.sh        # Parquet only
set -euo pipefail
cd "$(dirname "$0")/.."
LABELS=${LABELS:-1000000} FEATURES=${FEATURES:-10000000} KEYS=${KEYS:-100000}
DIR=${KFSQL_BENCH_DIR:-$PWD/target/bench-asof}
mkdir -p "$DIR"
python3 -c 'import duckdb' 2>/dev/null || pip install -q duckdb
python3 - "$DIR" "$LABELS" "$FEATURES" "$KEYS" <<'PY' > "$DIR/duckdb.txt"
import sys, time, duckdb
d, labels, features, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
con = duckdb.connect()
per_key = features // keys
# Each key has one feature row per minute (times unique per key, so the answer is deterministic); labels fall at
# random seconds over the same span.
con.execute(f"""COPY (SELECT 'k' || (i % {keys}) AS k, TIMESTAMP '2026-01-01' + to_seconds((i // {keys}) * 60) AS t, i AS v
                FROM range({features}) r(i)) TO '{d}/features.parquet' (FORMAT parquet)""")
con.execute(f"""COPY (SELECT i AS id, 'k' || (hash(i) % {keys}) AS k,
                       TIMESTAMP '2026-01-01' + to_seconds(hash(i * 7) % {per_key * 60}) AS t
                FROM range({labels}) r(i)) TO '{d}/labels.parquet' (FORMAT parquet)""")
q = f"""SELECT count(*), count(f.v), sum(f.v) FROM '{d}/labels.parquet' l
        ASOF LEFT JOIN '{d}/features.parquet' f ON l.k = f.k AND l.t >= f.t"""
best, answer = None, None
for _ in range(3):
    s = time.perf_counter(); answer = con.execute(q).fetchall(); e = time.perf_counter() - s
    best = e if best is None else min(best, e)
print(f"duckdb {duckdb.__version__} answer={answer}")
print(f"duckdb_seconds={best:.3f}")
PY
cat "$DIR/duckdb.txt"
KFSQL_BENCH_DIR="$DIR" cargo bench --bench asof 2>/dev/null | tee "$DIR/kfsql.txt"
duck=$(sed -n 's/^duckdb_seconds=//p' "$DIR/duckdb.txt")
kf=$(sed -n 's/^kfsql_seconds=//p' "$DIR/kfsql.txt")
python3 - "$LABELS" "$FEATURES" "$KEYS" "$duck" "$DIR/kfsql.txt" <<'PY'
import sys
labels, features, keys, duck, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
got = dict(l.strip().split('=', 1) for l in open(path) if l.count('=') == 1 and l.split('=')[0].endswith('_seconds'))
print(f'ASOF {labels:,} labels x {features:,} features over {keys:,} keys; DuckDB (Parquet) {duck:.3f}s')
for name, what in [('kfsql_seconds', 'kfsql, both sides from Parquet'),
                   ('kafka_seconds', 'kfsql, features from Kafka'),
                   ('kafka_pw_seconds', 'kfsql, both from Kafka (partition-wise)'),
                   ('kafka_read_seconds', 'kfsql, only reading the features from Kafka')]:
    if name in got:
        t = float(got[name])
        print(f'  {what:<42} {t:8.3f}s   kfsql/DuckDB time ratio {t / duck:.2f}')
PY
