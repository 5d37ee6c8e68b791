"""Arrow Flight SQL clients against a running kfsql (`serve --flight-listen`): ADBC's Flight SQL driver into pyarrow,
pandas and polars, and pyarrow.flight. Run by scripts/test.sh in two modes:

    python3 tests/clients/flight_client.py open 'grpc://127.0.0.1:50051' 'host=127.0.0.1 port=5433 user=kfsql dbname=kfsql'
    python3 tests/clients/flight_client.py secure 'grpc+tls://localhost:50052' CA_FILE

`open`: the fraud demo over Flight equals the same server's pg-wire answers (psycopg, binary) row for row — counts,
the whole training set, prepared statements with parameters — results come in one endpoint per Kafka partition,
read concurrently, and the catalog calls list the tables with their columns. `secure`: TLS verified against the
certificate, basic authentication (a wrong password refused), a read-only user refused a write.

Each check prints one line; the exit status is the number of failures.
"""

import concurrent.futures
import sys
import warnings

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import polars as pl
import pyarrow as pa
import pyarrow.flight as pf

warnings.filterwarnings("ignore")
failures = passes = 0


def check(what, got, want):
    global failures, passes
    if got == want:
        passes += 1
        print(f"flight check ok: {what}")
    else:
        failures += 1
        print(f"flight check FAILED: {what}: got {str(got)[:400]!r}, want {str(want)[:400]!r}")


def run(what, fn, want):
    try:
        check(what, fn(), want)
    except Exception as e:  # a failing client call is a failed check, reported with its error
        global failures
        failures += 1
        print(f"flight check FAILED: {what}: {type(e).__name__}: {str(e)[:400]}")


def refused(fn, *needles):
    """The error text of a call that must fail, or 'no error' (so a check compares it with what it must contain)."""
    try:
        fn()
        return "no error"
    except Exception as e:
        text = str(e)
        return all(n in text for n in needles) or text[:300]


def arrow(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()


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


def statement_query(sql):
    """A Flight SQL CommandStatementQuery in its google.protobuf.Any, for the plain Flight client (which has no
    Flight SQL messages of its own): two length-delimited fields each."""

    def field(number, payload):
        n, size = len(payload), b""
        while True:
            size += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                break
        return bytes([number << 3 | 2]) + size + payload

    command = field(1, sql.encode())
    return field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + field(2, command)


def open_mode(uri, dsn):
    import psycopg

    pg = psycopg.connect(dsn, autocommit=True)

    def pg_rows(sql, params=None):
        with pg.cursor(binary=True) as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    conn = flight_sql.connect(uri)
    # counts, compared with pg-wire's
    for table in ("transactions", "labels", "user_txn_features"):
        want = pg_rows(f"SELECT count(*) FROM {table}")[0][0]
        run(f"count(*) FROM {table} equals pg-wire's ({want})",
            lambda: arrow(conn, f"SELECT count(*) AS n FROM {table}").column("n").to_pylist(), [want])

    # the training set, row for row
    want = sorted(pg_rows(TRAINING_SET))
    table = arrow(conn, TRAINING_SET)
    run(f"the training set ({len(want)} rows, {table.num_columns} columns) equals pg-wire's row for row",
        lambda: sorted(tuple(r.values()) for r in table.to_pylist()), want)
    check("the training set has at least 20 columns", table.num_columns >= 20, True)
    check("the training set is not empty", len(want) > 0, True)
    pg_frame = pa.Table.from_pylist([dict(zip(table.column_names, r)) for r in want], schema=table.schema).to_pandas()
    run("into pandas: the same frame (NaN and NULL where pg-wire has them)",
        lambda: table.to_pandas().sort_values("txn_id").reset_index(drop=True).equals(pg_frame), True)
    run("into polars: the same fraud count",
        lambda: pl.from_arrow(table).filter(pl.col("is_fraud")).height,
        sum(1 for r in want if r[1]))

    # one endpoint per Kafka partition, read concurrently on their own connections
    n_parts = pg_rows("SELECT count(DISTINCT _partition) FROM transactions")[0][0]
    with conn.cursor() as cur:
        partitions, schema = cur.adbc_execute_partitions("SELECT txn_id, _partition, _offset FROM transactions")
    check(f"a scan of transactions comes in {n_parts} endpoints (one per Kafka partition)", len(partitions), n_parts)

    def read(p):
        with flight_sql.connect(uri) as c, c.cursor() as cur:
            cur.adbc_read_partition(p)
            return cur.fetch_arrow_table()

    with concurrent.futures.ThreadPoolExecutor(len(partitions) or 1) as pool:
        parts = list(pool.map(read, partitions))
    check("each endpoint holds exactly one Kafka partition",
          sorted(len(set(t.column("_partition").to_pylist())) for t in parts), [1] * len(parts))
    run("the endpoints' union equals the whole (pg-wire)",
        lambda: sorted(r for t in parts for r in zip(*(t.column(c).to_pylist() for c in t.column_names))),
        sorted(pg_rows("SELECT txn_id, _partition, _offset FROM transactions")))
    with conn.cursor() as cur:
        sorted_parts, _ = cur.adbc_execute_partitions("SELECT txn_id FROM transactions ORDER BY txn_id")
    check("an ordered result comes in one endpoint", len(sorted_parts), 1)

    # prepared statements with parameters ($n, as on pg-wire), executed twice with different values
    with conn.cursor() as cur:
        for user in ("u42", "u7"):
            want = pg_rows("SELECT txn_id, amount FROM transactions WHERE user_id = %s ORDER BY txn_id", (user,))
            cur.execute("SELECT txn_id, amount FROM transactions WHERE user_id = $1 ORDER BY txn_id", (user,))
            check(f"a prepared statement with a parameter ({user}: {len(want)} rows)",
                  [tuple(r) for r in cur.fetchall()], [tuple(r) for r in want])
        want = pg_rows("SELECT count(*) FROM transactions WHERE amount > 100 AND country = 'US'")[0][0]
        cur.execute("SELECT count(*) FROM transactions WHERE amount > $1 AND country = $2", (100.0, "US"))
        check("two parameters of two types", cur.fetchone()[0], want)

    # catalog calls
    objects = conn.adbc_get_objects(depth="all", catalog_filter="kfsql", db_schema_filter="public").read_all().to_pylist()
    tables = {t["table_name"]: [c["column_name"] for c in t["table_columns"]]
              for cat in objects for s in cat["catalog_db_schemas"] for t in s["db_schema_tables"]}
    pg_columns = [r[0] for r in pg_rows(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'transactions' ORDER BY ordinal_position")]
    check("GetTables lists transactions with pg-wire's columns, in order", tables.get("transactions"), pg_columns)
    check("GetTables lists every public table pg-wire lists", sorted(tables),
          sorted(r[0] for r in pg_rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")))
    run("GetTableSchema names the columns", lambda: conn.adbc_get_table_schema("labels").names,
        [r[0] for r in pg_rows("SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                               "AND table_name = 'labels' ORDER BY ordinal_position")])
    run("GetSqlInfo names the server", lambda: conn.adbc_get_info().get("vendor_name"), "kfsql")
    run("GetDbSchemas lists latest", lambda: any(
        s["db_schema_name"] == "latest" for cat in conn.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
        for s in cat["catalog_db_schemas"]), True)

    # errors carry their SQLSTATE
    check("an unknown table is an error with SQLSTATE 42P01",
          refused(lambda: arrow(conn, "SELECT * FROM nope"), "42P01"), True)
    check("a session command is refused with 0A000", refused(lambda: arrow(conn, "SET search_path = x"), "0A000"), True)

    conn.close()
    pg.close()


def secure_mode(uri, ca_file):
    ca = open(ca_file).read()
    tls = {adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value: ca}

    def connect(user, password):
        return flight_sql.connect(uri, db_kwargs={"username": user, "password": password, **tls})

    with connect("alice", "s3cret") as conn:
        run("TLS and a password: alice counts the labels",
            lambda: arrow(conn, "SELECT count(*) AS n FROM labels").column("n").to_pylist()[0] > 0, True)
    for wrong in ("wrong", "s3cre", "s3cret!"):  # unpadded base64 of every length (Go's client sends it so)
        check(f"a wrong password ({len(wrong)} characters) is refused",
              refused(lambda: arrow(connect("alice", wrong), "SELECT 1"), "password authentication failed"), True)
    with connect("bob", "pw") as conn:
        check("the read-only user cannot drop a table (42501)",
              refused(lambda: arrow(conn, "DROP TABLE labels"), "read-only", "42501"), True)
        run("the read-only user may query",
            lambda: arrow(conn, "SELECT count(*) AS n FROM labels").column("n").to_pylist()[0] > 0, True)
    # pyarrow.flight: basic authentication gives a bearer token; without it nothing is served
    client = pf.FlightClient(uri, tls_root_certs=ca.encode())
    header = client.authenticate_basic_token(b"alice", b"s3cret")
    check("pyarrow.flight's basic authentication answers a bearer token", header[0], b"authorization")
    options = pf.FlightCallOptions(headers=[header])
    info = client.get_flight_info(pf.FlightDescriptor.for_command(statement_query("SELECT * FROM labels")), options)
    rows = sum(client.do_get(e.ticket, options).read_all().num_rows for e in info.endpoints)
    with connect("alice", "s3cret") as conn:
        want = arrow(conn, "SELECT count(*) AS n FROM labels").column("n").to_pylist()[0]
    check(f"pyarrow.flight reads every endpoint of GetFlightInfo ({len(info.endpoints)}): all {want} labels", rows, want)
    check("without credentials a call is refused",
          refused(lambda: client.get_flight_info(pf.FlightDescriptor.for_command(statement_query("SELECT 1"))),
                  "authentication required"), True)
    check("plain text to a TLS endpoint fails",
          refused(lambda: arrow(flight_sql.connect(uri.replace("grpc+tls", "grpc"),
                                                   db_kwargs={"username": "alice", "password": "s3cret"}),
                                "SELECT 1")) != "no error", True)


mode = sys.argv[1]
if mode == "open":
    open_mode(sys.argv[2], sys.argv[3])
elif mode == "secure":
    secure_mode(sys.argv[2], sys.argv[3])
else:
    sys.exit(f"unknown mode {mode}")
print(f"flight ({mode}): {passes} passed, {failures} failed")
sys.exit(failures)
