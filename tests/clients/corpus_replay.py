"""Replays tests/clients/corpus: every statement psql, pgjdbc, Spark, psycopg 3, psycopg2, SQLAlchemy, pandas and
node-pg sent to a real PostgreSQL 15, sent to kfsql instead, for kfsql's own tables. Run by scripts/test.sh:

    python3 tests/clients/corpus_replay.py 'host=127.0.0.1 port=5433 user=kfsql dbname=kfsql' tests/clients/corpus

The corpus was captured on a database with tables `customers`, `orders` and a view `big_customers`. Catalog statements
are replayed with those names (in literals, regexes and parameters) and their OIDs replaced by kfsql's `transactions`
and `labels`; statements that read the corpus tables' rows (their columns do not exist here) are skipped, since the
client suites run the same shapes on kfsql's tables. Parameters go as text with no declared type, as pgjdbc and node-pg
send them. A cursor declared over a corpus table is declared over `transactions` instead, so the FETCH and CLOSE that
follow replay too. Every replayed statement must succeed, except those PostgreSQL failed (marked `-- ERROR: …` in the
corpus), which must fail with the same SQLSTATE class.

Prints one line per failure and a summary; the exit status is the number of failures (capped at 100).
"""

import os
import re
import sys

import psycopg

dsn, corpus = sys.argv[1], sys.argv[2]
verbose = os.environ.get("KFSQL_REPLAY_VERBOSE") == "1"

# The corpus database's relations, in the order kfsql's stand-ins are assigned.
CORPUS_TABLES = {"customers": "transactions", "orders": "labels", "big_customers": "transactions"}
CORPUS_OIDS = {"16385": "customers", "16395": "orders", "16409": "big_customers"}
# Statements that read the corpus tables' data (or write to them) are not catalog traffic.
DATA = re.compile(
    r"\b(from|into|update|join)\s+(public\.)?\"?(customers|orders|big_customers)\b|^\s*(insert|update|delete|create|drop|alter)\b",
    re.I,
)


def entries(path):
    """(header, params, sql) per captured statement."""
    text = open(path, encoding="utf-8").read()
    for block in re.split(r"\n(?=-- \[pid )", text):
        lines = block.strip("\n").split("\n")
        if not lines or not lines[0].startswith("-- [pid "):
            continue
        header, params, body = lines[0], [], []
        for line in lines[1:]:
            if line.startswith("-- parameters:"):
                params = [
                    (int(n), v.replace("''", "'")) for n, v in re.findall(r"\$(\d+) = '((?:[^']|'')*)'", line)
                ]
            elif not (line.startswith("--") and not body):
                body.append(line)
        sql = "\n".join(body).strip()
        if sql.endswith(";"):
            sql = sql[:-1]
        if sql:
            yield header, [v for _, v in sorted(params)], sql


def ours(value, oids):
    """A corpus table name or OID in a literal or parameter, turned into kfsql's."""
    for corpus_name, kfsql_name in CORPUS_TABLES.items():
        value = re.sub(rf"\b{corpus_name}\b", kfsql_name, value)
    for corpus_oid, corpus_name in CORPUS_OIDS.items():
        value = re.sub(rf"\b{corpus_oid}\b", str(oids[CORPUS_TABLES[corpus_name]]), value)
    return value


def main():
    conn = psycopg.connect(dsn, autocommit=True)
    oids = {
        name: oid
        for name, oid in conn.execute(
            "SELECT relname, oid FROM pg_catalog.pg_class WHERE relname IN ('transactions', 'labels')"
        ).fetchall()
    }
    assert set(oids) == {"transactions", "labels"}, f"kfsql's demo tables missing from pg_class: {oids}"
    files = sorted(f for f in os.listdir(corpus) if f.endswith(".sql"))
    replayed = skipped = 0
    failures = []
    for f in files:
        client = f[: -len(".sql")]
        for header, params, sql in entries(os.path.join(corpus, f)):
            expected_error = re.search(r"-- ERROR: (.*)$", sql)
            if expected_error:
                sql = sql[: expected_error.start()].strip().rstrip(";")
            if re.match(r"(?is)\s*DECLARE\b", sql) and DATA.search(sql):
                sql = re.sub(r"(?is)\bFOR\s+select\b.*$", "FOR SELECT txn_id FROM transactions"
                             + (" WHERE amount < $1" if params else ""), sql)
            elif DATA.search(sql) and not expected_error:
                skipped += 1
                continue
            sql, params = ours(sql, oids), [ours(p, oids) for p in params]
            replayed += 1
            try:
                if "simple" in header:
                    conn.execute(sql, prepare=False)
                else:
                    psycopg.RawCursor(conn).execute(sql, params or None)
                if expected_error:
                    failures.append((client, sql, params, f"succeeded where PostgreSQL failed: {expected_error[1]}"))
                elif verbose:
                    print(f"ok   {client}: {sql[:100]!r}")
            except psycopg.Error as e:
                if not expected_error or "does not exist" not in expected_error[1] or e.sqlstate != "42P01":
                    failures.append((client, sql, params, e))
                if conn.closed:
                    conn = psycopg.connect(dsn, autocommit=True)
                elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
    for client, sql, params, e in failures:
        one_line = " ".join(sql.split())
        print(f"corpus replay FAILED [{client}] {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
        print(f"    {one_line[:400]}{' …' if len(one_line) > 400 else ''}  params={params}")
    print(f"corpus replay: {replayed - len(failures)} of {replayed} statements from {len(files)} clients answered "
          f"({skipped} reading the corpus tables' rows skipped)")
    print(f"corpus: {replayed - len(failures)} passed, {len(failures)} failed")
    return min(len(failures), 100)


sys.exit(main())
