"""Training-set export, measured side by side in one run: the same result read into a pyarrow Table by
(a) ADBC Flight SQL, (b) psycopg 3 binary COPY, (c) pandas.read_sql over psycopg, (d) Spark JDBC (pgjdbc, one task per
Kafka partition); and the peak memory of a `COPY … TO` Parquet file of the large result.

    cargo build --release && target/venv/bin/python benches/export.py [--transactions 1000000] [--big-rows 10000000]

It starts Apache Kafka (scripts/kafka.sh) and a release kfsql serving the fraud demo with --demo-transactions N
(N transactions, N labels, the feature pipelines run to the end), then reads:
  * the training set: every label ASOF-joined to two feature tables, 20 columns;
  * a large result: the transactions table repeated to --big-rows rows (a CROSS JOIN with a small series, so the
    row count does not need that many messages in Kafka).
Prints rows/s per client, the ratios the issue asks for, and the peak RSS of kfsql during the export.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import pandas as pd
import psycopg
import pyarrow as pa

from harness import ROOT, free_port, start_kafka, stop_kafka, wait_port

TRAINING_SET = """
SELECT l.txn_id, l.is_fraud, t.amount, t.country, t.merchant, t.event_time, l.user_id,
       f.window_end AS features_as_of, f.txn_count_1h, f.amount_sum_1h, f.amount_avg_1h, f.amount_max_1h,
       f.countries_1h, f.last_country,
       d.day_end AS daily_as_of, d.txn_count_1d, d.amount_sum_1d, l._partition, l._offset, t._offset AS txn_offset
FROM labels l
JOIN transactions t ON t.txn_id = l.txn_id
ASOF JOIN user_txn_features f MATCH_CONDITION (l.event_time >= f.window_end) ON l.user_id = f.user_id
ASOF JOIN user_daily_spend d MATCH_CONDITION (l.event_time >= d.day_end) ON l.user_id = d.user_id
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def timed(fn, runs):
    times, rows = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t0)
        if rows is not None and n != rows:
            sys.exit(f"row counts differ between runs: {rows} vs {n}")
        rows = n
    return statistics.median(times), min(times), rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--transactions", type=int, default=1_000_000)
    ap.add_argument("--big-rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-slow", action="store_true", help="pandas.read_sql and Spark once each, not --runs times")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="kfsql-export-bench.")
    brokers = start_kafka(f"{work}/kafka")
    pg_port, flight_port = free_port(), free_port()
    log = open(f"{work}/kfsql.log", "w")
    server = subprocess.Popen(
        [f"{ROOT}/target/release/kfsql", "serve", "--listen", f"127.0.0.1:{pg_port}", "--flight-listen",
         f"127.0.0.1:{flight_port}", "--brokers", brokers, "--demo", "--demo-transactions", str(args.transactions),
         "--export-dir", f"{work}/exports", "--query-timeout", "1h"],
        stdout=log, stderr=log)
    try:
        run(args, work, server, pg_port, flight_port)
    finally:
        server.terminate()
        server.wait()
        stop_kafka(f"{work}/kafka")


def run(args, work, server, pg_port, flight_port):
    wait_port(pg_port, 1800)
    dsn = f"host=127.0.0.1 port={pg_port} user=kfsql dbname=kfsql"
    pg = psycopg.connect(dsn, autocommit=True)
    # the pipelines must have caught up, or the training set would change between readers
    t0 = time.time()
    while True:
        lags = [r[0] for r in pg.execute("SELECT input_lag FROM kfsql.pipelines").fetchall()]
        if lags and all(lag == 0 for lag in lags):
            break
        if time.time() - t0 > 1800:
            sys.exit(f"pipelines still behind: {lags}")
        time.sleep(2)
    n_tx = pg.execute("SELECT count(*) FROM transactions").fetchone()[0]
    repeat = -(-args.big_rows // n_tx)
    # The series is the cross join's build side: each output batch is one copy of a whole scanned batch. (The other
    # way round DataFusion's cross join emits one `repeat`-row batch per transaction, and building those dominates.)
    big = f"SELECT t.*, g.copy_no FROM (SELECT unnest(range(0, {repeat})) AS copy_no) g CROSS JOIN transactions t"
    print(f"fraud demo: {n_tx} transactions; features caught up after {time.time() - t0:.0f} s")

    uri = f"grpc://127.0.0.1:{flight_port}"
    jar = f"{ROOT}/target/client-jars/postgresql-42.7.14.jar"

    def adbc(sql):
        def read():
            with flight_sql.connect(uri) as c, c.cursor() as cur:
                cur.execute(sql)
                return cur.fetch_arrow_table().num_rows
        return read

    def psycopg_copy(sql):
        def read():
            with psycopg.connect(dsn) as c:
                with c.cursor() as cur:
                    cur.execute(f"SELECT * FROM ({sql}) q LIMIT 0")
                    names = [d.name for d in cur.description]
                    types = [c.adapters.types.get(d.type_code).name for d in cur.description]
                columns = [[] for _ in names]
                with c.cursor().copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)") as copy:
                    copy.set_types(types)
                    for row in copy.rows():
                        for col, v in zip(columns, row):
                            col.append(v)
                return pa.table(dict(zip(names, columns))).num_rows
        return read

    def pandas_read(sql):
        def read():
            with psycopg.connect(dsn) as c:
                return len(pd.read_sql(sql, c))
        return read

    spark_session = []

    def spark(sql):
        def read():
            if not spark_session:
                from pyspark.sql import SparkSession
                spark_session.append(
                    SparkSession.builder.master("local[2]").appName("kfsql-export-bench").config("spark.jars", jar)
                    .config("spark.ui.enabled", "false").config("spark.driver.memory", "6g")
                    .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
                spark_session[0].sparkContext.setLogLevel("ERROR")
            parts = pg.execute("SELECT count(DISTINCT _partition) FROM transactions").fetchone()[0]
            df = (spark_session[0].read.format("jdbc")
                  .option("url", f"jdbc:postgresql://127.0.0.1:{pg_port}/kfsql?user=kfsql")
                  .option("driver", "org.postgresql.Driver").option("dbtable", f"({sql}) AS q")
                  .option("partitionColumn", "_partition").option("lowerBound", "0").option("upperBound", str(parts))
                  .option("numPartitions", str(parts)).option("fetchsize", "10000").load())
            return df.toArrow().num_rows
        return read

    results = {}
    for name, sql in (("training set", TRAINING_SET), ("large result", big)):
        print(f"\n{name}:")
        for client, make, slow in (("ADBC Flight SQL", adbc, False), ("psycopg 3 binary COPY", psycopg_copy, False),
                                   ("pandas.read_sql (psycopg)", pandas_read, True), ("Spark JDBC", spark, True)):
            runs = 1 if (slow and args.skip_slow) else args.runs
            median, best, rows = timed(make(sql), runs)
            results[(name, client)] = (median, best, rows)
            print(f"  {client:28} {rows:>10} rows  median {median:8.2f} s  best {best:8.2f} s  "
                  f"{rows / median / 1e6:6.2f} M rows/s (median of {runs})", flush=True)
        counts = {results[(name, c)][2] for c in ("ADBC Flight SQL", "psycopg 3 binary COPY",
                                                   "pandas.read_sql (psycopg)", "Spark JDBC")}
        if len(counts) != 1:
            sys.exit(f"the clients read different row counts: {counts}")
        flight = results[(name, "ADBC Flight SQL")][0]
        for other, goal in (("pandas.read_sql (psycopg)", 10), ("psycopg 3 binary COPY", 3), ("Spark JDBC", None)):
            ratio = results[(name, other)][0] / flight
            print(f"  Flight is {ratio:5.1f}x faster than {other}" + (f" (goal >= {goal}x)" if goal else ""))

    # COPY … TO a Parquet file of the large result: peak RSS of the server above its resting level
    rest = rss_kib(server.pid)
    peak, done = [rest], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(rss_kib(server.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    tag = pg.execute(f"COPY ({big}) TO 'big.parquet'").statusmessage
    elapsed = time.perf_counter() - t0
    done.set()
    sampler.join()
    print(f"\nCOPY … TO 'big.parquet': {tag} in {elapsed:.1f} s; kfsql RSS at rest {rest / 1024:.0f} MiB, "
          f"peak {max(peak) / 1024:.0f} MiB (+{(max(peak) - rest) / 1024:.0f} MiB)")
    if spark_session:
        spark_session[0].stop()


if __name__ == "__main__":
    main()
