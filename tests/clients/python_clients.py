"""Python clients against a running kfsql serving the fraud demo: psycopg 3 (text and binary parameters and
results, COPY TO STDOUT), psycopg2, SQLAlchemy 2 reflection (both drivers) and pandas. Run by scripts/test.sh:

    python3 tests/clients/python_clients.py 'host=127.0.0.1 port=5433 user=kfsql dbname=kfsql' 5000

Each check prints one line; the exit status is the number of failures.
"""

import datetime
import sys
import warnings

import pandas as pd
import psycopg
import psycopg2
import sqlalchemy as sa

warnings.filterwarnings("ignore")
dsn, expected = sys.argv[1], int(sys.argv[2])
params = dict(kv.split("=", 1) for kv in dsn.split())
url = f"{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"
failures = passes = 0


def check(what, got, want):
    global failures, passes
    if got == want:
        passes += 1
        print(f"python check ok: {what}")
    else:
        failures += 1
        print(f"python check FAILED: {what}: got {got!r}, want {want!r}")


def run(what, fn, want):
    try:
        check(what, fn(), want)
    except Exception as e:  # a failing client call is a failed check, reported with its error
        global failures
        failures += 1
        print(f"python check FAILED: {what}: {type(e).__name__}: {e}")


def psycopg3_text():
    with psycopg.connect(dsn) as c:
        n = c.execute("SELECT count(*) FROM transactions").fetchone()[0]
        rows = c.execute(
            "SELECT txn_id, amount, event_time FROM transactions WHERE user_id = %s ORDER BY event_time", ["u42"]
        ).fetchall()
        ok = all(isinstance(r[1], float) and isinstance(r[2], datetime.datetime) for r in rows)
        return n, len(rows) > 0, ok


def psycopg3_binary():
    with psycopg.connect(dsn) as c:
        text = c.execute("SELECT txn_id, amount FROM transactions WHERE amount > %s ORDER BY txn_id", [100.5]).fetchall()
        cur = c.cursor(binary=True)
        binary = cur.execute("SELECT txn_id, amount FROM transactions WHERE amount > %s ORDER BY txn_id", [100.5]).fetchall()
        return text == binary and len(text) > 0


def psycopg3_transaction():
    # psycopg wraps work in BEGIN / SAVEPOINT / ROLLBACK TO SAVEPOINT / RELEASE
    with psycopg.connect(dsn) as c:
        with c.transaction():
            with c.transaction():
                one = c.execute("SELECT 1").fetchone()[0]
        return one, c.info.transaction_status.name


def psycopg3_copy_out():
    sql = "SELECT txn_id, amount FROM transactions WHERE user_id = 'u42' ORDER BY txn_id"
    with psycopg.connect(dsn) as c:
        want = [(t, float(a)) for t, a in c.execute(sql).fetchall()]
        cur = c.cursor()
        with cur.copy(f"COPY ({sql}) TO STDOUT") as copy:
            copy.set_types(["text", "float8"])
            got = list(copy.rows())
        with cur.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
            csv = b"".join(bytes(b) for b in copy).decode()
        return got == want and len(got) > 0, csv.splitlines()[0], len(csv.splitlines()) == len(want) + 1


def psycopg3_binary_copy():
    """FORMAT binary, read with psycopg 3's binary loaders: every type of the fraud tables, NULLs, no rows."""
    sql = ("SELECT t.txn_id, t.amount, t.event_time, t._partition, t._offset, l.is_fraud, t.merchant "
           "FROM transactions t JOIN labels l ON l.txn_id = t.txn_id ORDER BY t.txn_id")
    types = ["text", "float8", "timestamp", "int4", "int8", "bool", "text"]
    with psycopg.connect(dsn) as c:
        with c.cursor(binary=True) as cur:
            want = cur.execute(sql).fetchall()
        cur = c.cursor()
        with cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(types)
            got = list(copy.rows())
        with cur.copy(f"COPY ({sql} LIMIT 0) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(types)
            empty = list(copy.rows())
        return len(got) == expected, got == want, empty


def psycopg2_query():
    c = psycopg2.connect(dsn)
    cur = c.cursor()
    cur.execute("SELECT count(*) FROM transactions WHERE user_id = %s AND amount >= %s", ("u42", 0))
    n = cur.fetchone()[0]
    cur.execute("SELECT count(*) FROM transactions")
    total = cur.fetchone()[0]
    c.close()
    return n > 0, total


def psycopg3_server_cursor():
    with psycopg.connect(dsn) as c:
        with c.cursor(name="kfsql_check") as cur:
            cur.execute("SELECT txn_id, amount FROM transactions WHERE amount > %s ORDER BY txn_id", [100.0])
            names = [d.name for d in cur.description]
            first, rest = cur.fetchmany(3), cur.fetchall()
        n = c.execute("SELECT count(*) FROM transactions WHERE amount > 100.0").fetchone()[0]
        return names, len(first) + len(rest) == n and n > 3


def psycopg2_named_cursor():
    c = psycopg2.connect(dsn)
    cur = c.cursor(name="kfsql_check")
    cur.itersize = 333
    cur.execute("SELECT txn_id FROM transactions")
    n = sum(1 for _ in cur)
    c.commit()
    c.close()
    return n


def sqlalchemy_columns(engine):
    columns = {c["name"]: type(c["type"]).__name__ for c in sa.inspect(engine).get_columns("transactions")}
    return columns.get("amount"), columns.get("event_time"), columns.get("user_id"), "_offset" in columns


engines = {
    "psycopg": sa.create_engine(f"postgresql+psycopg://{url}"),
    "psycopg2": sa.create_engine(f"postgresql+psycopg2://{url}"),
}
tables = ["labels", "transactions", "user_daily_spend", "user_txn_features"]

run("psycopg 3: count, text parameters, typed results", psycopg3_text, (expected, True, True))
run("psycopg 3: binary parameters and results equal text ones", psycopg3_binary, True)
run("psycopg 3: nested transactions (savepoints)", psycopg3_transaction, (1, "IDLE"))
run("psycopg 3: COPY (query) TO STDOUT, text and CSV with header", psycopg3_copy_out, (True, "txn_id,amount", True))
run("psycopg 3: COPY (query) TO STDOUT (FORMAT BINARY), every row as the binary cursor reads it, and no rows",
    psycopg3_binary_copy, (True, True, []))
run("psycopg2: client-side parameters", psycopg2_query, (True, expected))
run("psycopg 3: server-side cursor (DECLARE, Describe of its portal, FETCH)", psycopg3_server_cursor,
    (["txn_id", "amount"], True))
run("psycopg2: named cursor in chunks of itersize", psycopg2_named_cursor, expected)
for driver, engine in engines.items():
    run(f"SQLAlchemy ({driver}): get_table_names lists each Kafka table once",
        lambda: sorted(sa.inspect(engine).get_table_names()), tables)
    run(f"SQLAlchemy ({driver}): get_table_names(schema='latest') lists the online views",
        lambda: sorted(sa.inspect(engine).get_table_names(schema="latest")), ["transactions", "user_txn_features"])
    run(f"SQLAlchemy ({driver}): get_schema_names",
        lambda: [s for s in sa.inspect(engine).get_schema_names() if s in ("public", "latest", "kfsql")],
        ["kfsql", "latest", "public"])
    run(f"SQLAlchemy ({driver}): get_columns with types", lambda: sqlalchemy_columns(engine),
        ("DOUBLE_PRECISION", "TIMESTAMP", "TEXT", True))
    run(f"SQLAlchemy ({driver}): get_pk_constraint, get_indexes, get_foreign_keys (Kafka tables have none)",
        lambda: (sa.inspect(engine).get_pk_constraint("transactions")["constrained_columns"],
                 sa.inspect(engine).get_indexes("transactions"), sa.inspect(engine).get_foreign_keys("transactions")),
        ([], [], []))
    run(f"pandas read_sql_table ({driver})", lambda: len(pd.read_sql_table("labels", engine)), expected)
    run(f"pandas read_sql ({driver})",
        lambda: pd.read_sql("SELECT user_id, count(*) AS n, avg(amount) AS a FROM transactions GROUP BY user_id",
                            engine)["n"].sum(), expected)
print(f"python: {passes} passed, {failures} failed")
sys.exit(min(failures, 100) if failures or passes else 1)
