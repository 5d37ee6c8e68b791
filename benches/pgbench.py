"""Point lookups driven by pgbench, PostgreSQL's own load driver, against kfsql's latest views and against a
PostgreSQL 15 primary-key table holding the same rows, side by side in one run.

    cargo build --release && target/venv/bin/python benches/pgbench.py [--keys 100000] [--seconds 10] [--runs 3]

It starts Apache Kafka (scripts/kafka.sh), a release kfsql on it, and a PostgreSQL in a throwaway data directory;
produces --keys rows to two topics through kfsql (`INSERT … SELECT`: an integer key and a text key) and loads the same
rows into PostgreSQL. Then, for each of four pgbench scripts (integer key, text key; one key or an IN of 10 keys per
statement), it runs `pgbench -n -M prepared -c 32 -j 2 -T seconds` --runs times on each server, alternating, and
prints the median TPS, the p50 / p99 latency of every transaction (from pgbench's per-transaction log) and the ratio
kfsql / PostgreSQL. Every kfsql run also checks that its lookups took the latest views' fast path
(`kfsql.freshness.lookups` grows by at least the number of transactions pgbench counted).
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import psycopg

from harness import ROOT, free_port, start_kafka, stop_kafka, wait_port

COLUMNS = "v1 DOUBLE PRECISION, v2 BIGINT, name VARCHAR, ts TIMESTAMP"


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not found:
        sys.exit("PostgreSQL is not installed (apt-get install postgresql)")
    return found[-1]


def as_postgres(cmd, **kw):
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, check=True, **kw)


# The pgbench scripts: (name, kfsql table, PostgreSQL table, key column, keys per statement)
SCRIPTS = [
    ("integer key, 1 per statement", "latest.pk_int", "pk_int", "id", 1),
    ("integer key, IN of 10", "latest.pk_int", "pk_int", "id", 10),
    ("text key, 1 per statement", "latest.pk_text", "pk_text", "k", 1),
    ("text key, IN of 10", "latest.pk_text", "pk_text", "k", 10),
]


def script_text(table, key, n, keys):
    lines = [f"\\set k{i} random(0, {keys - 1})" for i in range(n)]
    if n == 1:
        lines.append(f"SELECT * FROM {table} WHERE {key} = :k0;")
    else:
        lines.append(f"SELECT * FROM {table} WHERE {key} IN ({', '.join(f':k{i}' for i in range(n))});")
    return "\n".join(lines) + "\n"


def pgbench(bindir, work, tag, conninfo, script, seconds, clients, jobs):
    """One pgbench run; returns (tps, transactions, p50 ms, p99 ms)."""
    logdir = tempfile.mkdtemp(prefix=f"{tag}.", dir=work)
    path = os.path.join(logdir, "script.sql")
    with open(path, "w") as f:
        f.write(script)
    out = subprocess.run(
        [f"{bindir}/pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", str(jobs), "-T", str(seconds),
         "-f", path, "-l", "--log-prefix", os.path.join(logdir, "tx"), conninfo],
        capture_output=True, text=True, cwd=logdir)
    if out.returncode != 0:
        sys.exit(f"pgbench against {tag} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    tps = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", out.stdout, re.M)
    done = re.search(r"^number of transactions actually processed: (\d+)", out.stdout, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", out.stdout, re.M)
    if not tps or not done:
        sys.exit(f"cannot read pgbench's summary:\n{out.stdout}")
    if failed and int(failed.group(1)) != 0:
        sys.exit(f"pgbench against {tag}: {failed.group(1)} failed transactions\n{out.stdout}\n{out.stderr}")
    latencies = []
    for log in glob.glob(os.path.join(logdir, "tx*")):
        with open(log) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3:
                    latencies.append(int(fields[2]))
    if len(latencies) != int(done.group(1)):
        sys.exit(f"pgbench logged {len(latencies)} transactions but counted {done.group(1)}")
    latencies.sort()
    shutil.rmtree(logdir)
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000
    return float(tps.group(1)), int(done.group(1)), p(0.50), p(0.99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    bindir = pg_bin()
    work = tempfile.mkdtemp(prefix="kfsql-pgbench.")
    os.chmod(work, 0o755)
    brokers = start_kafka(f"{work}/kafka")
    kport, pport = free_port(), free_port()
    log = open(f"{work}/kfsql.log", "w")
    server = subprocess.Popen(
        [f"{ROOT}/target/release/kfsql", "serve", "--listen", f"127.0.0.1:{kport}", "--brokers", brokers,
         "--no-demo", "--max-connections", "200"], stdout=log, stderr=log)
    data = f"{work}/pg"
    os.mkdir(data)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    try:
        as_postgres([f"{bindir}/initdb", "-D", data, "-U", "postgres", "-A", "trust"], capture_output=True)
        as_postgres([f"{bindir}/pg_ctl", "-D", data, "-o",
                     f"-p {pport} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=200",
                     "-l", f"{data}/log", "-w", "start"], capture_output=True)
        run(args, bindir, work, brokers, kport, pport)
    finally:
        server.terminate()
        server.wait()
        stop_kafka(f"{work}/kafka")
        if os.path.exists(f"{data}/postmaster.pid"):
            as_postgres([f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def rows_sql(key_expr, keys):
    return (f"SELECT {key_expr}, CAST(n AS DOUBLE) * 0.5, n * 7, concat('name-', CAST(n AS VARCHAR)), "
            f"CAST(to_timestamp(1795132800 + n) AS TIMESTAMP) "
            f"FROM (SELECT unnest(range(0, {keys})) AS n) s")


def run(args, bindir, work, brokers, kport, pport):
    wait_port(kport, 300)
    kdsn = f"host=127.0.0.1 port={kport} user=kfsql dbname=kfsql"
    pdsn = f"host=127.0.0.1 port={pport} user=postgres dbname=postgres"
    k = psycopg.connect(kdsn, autocommit=True)
    p = psycopg.connect(pdsn, autocommit=True)
    t0 = time.time()
    for table, key, key_type, key_expr in (("pk_int", "id", "BIGINT", "n"),
                                           ("pk_text", "k", "VARCHAR", "CAST(n AS VARCHAR)")):
        topic = f"bench_{table}"
        subprocess.run(["java", "-cp", f"{ROOT}/target/kafka/lib/*", "org.apache.kafka.tools.TopicCommand",
                        "--bootstrap-server", brokers, "--create", "--topic", topic, "--partitions", "8"],
                       check=True, capture_output=True)
        k.execute(f"CREATE EXTERNAL TABLE {table} ({key} {key_type} NOT NULL, {COLUMNS}) STORED AS KAFKA "
                  f"LOCATION '{topic}' OPTIONS ('format' 'json', 'key' '{key}', 'event_time' 'ts', "
                  f"'online' 'true')")
        k.execute(f"INSERT INTO {table} {rows_sql(key_expr, args.keys)}")
        pg_type = "bigint" if key_type == "BIGINT" else "text"
        p.execute(f"CREATE TABLE {table} ({key} {pg_type} PRIMARY KEY, v1 double precision, v2 bigint, "
                  f"name text, ts timestamp)")
        p.execute(f"INSERT INTO {table} SELECT {'n' if pg_type == 'bigint' else 'n::text'}, n * 0.5::float8, n * 7, "
                  f"'name-' || n, TIMESTAMP '2026-11-20 00:00:00' + n * INTERVAL '1 second' "
                  f"FROM generate_series(0, {args.keys - 1}) n")
        p.execute(f"VACUUM ANALYZE {table}")
        deadline = time.time() + 600
        while True:
            try:
                n = k.execute(f"SELECT count(*) FROM latest.{table}").fetchone()[0]
            except psycopg.Error:
                n = -1  # 55000 while the view is loading
            if n == args.keys:
                break
            if time.time() > deadline:
                sys.exit(f"latest.{table} holds {n} keys, not {args.keys}")
            time.sleep(0.5)
        # the same answer from both servers, for a few keys
        for probe in (0, args.keys // 2, args.keys - 1):
            want = p.execute(f"SELECT * FROM {table} WHERE {key} = %s",
                             (probe if pg_type == "bigint" else str(probe),)).fetchall()
            got = k.execute(f"SELECT {key}, v1, v2, name, ts FROM latest.{table} WHERE {key} = %s",
                            (probe if pg_type == "bigint" else str(probe),)).fetchall()
            if [tuple(r) for r in got] != [tuple(r) for r in want]:
                sys.exit(f"{table} key {probe}: kfsql {got} vs PostgreSQL {want}")
    print(f"{args.keys} keys per table produced to Apache Kafka and loaded into PostgreSQL in {time.time() - t0:.0f} s")
    print(f"pgbench -n -M prepared -c {args.clients} -j {args.jobs} -T {args.seconds}, median of {args.runs} runs "
          f"each, alternating\n")

    def lookups():
        return sum(r[0] for r in k.execute("SELECT lookups FROM kfsql.freshness").fetchall())

    header = f"{'script':30} {'kfsql TPS':>11} {'p50':>6} {'p99':>6}   {'PostgreSQL TPS':>14} {'p50':>6} {'p99':>6}   ratio"
    print(header)
    ratios = []
    for name, ktable, ptable, key, n in SCRIPTS:
        ks, ps = [], []
        for _ in range(args.runs):
            before = lookups()
            r = pgbench(bindir, work, "kfsql", f"host=127.0.0.1 port={kport} user=kfsql dbname=kfsql",
                        script_text(ktable, key, n, args.keys), args.seconds, args.clients, args.jobs)
            fast = lookups() - before
            if fast < r[1]:
                sys.exit(f"{name}: pgbench ran {r[1]} transactions but only {fast} took the fast path")
            ks.append(r)
            ps.append(pgbench(bindir, work, "postgres", f"host=127.0.0.1 port={pport} user=postgres dbname=postgres",
                              script_text(ptable, key, n, args.keys), args.seconds, args.clients, args.jobs))
        km = sorted(ks)[len(ks) // 2]
        pm = sorted(ps)[len(ps) // 2]
        ratio = km[0] / pm[0]
        ratios.append(ratio)
        print(f"{name:30} {km[0]:11.0f} {km[2]:6.2f} {km[3]:6.2f}   {pm[0]:14.0f} {pm[2]:6.2f} {pm[3]:6.2f}   "
              f"{ratio:5.2f}x   (kfsql runs {', '.join(f'{r[0]:.0f}' for r in ks)}; "
              f"PostgreSQL {', '.join(f'{r[0]:.0f}' for r in ps)})", flush=True)
    print(f"\nlatency in ms; ratio = kfsql TPS / PostgreSQL TPS (medians); lowest ratio {min(ratios):.2f}x "
          f"(goal >= 1.5x, kfsql p99 <= 1 ms)")


if __name__ == "__main__":
    main()
