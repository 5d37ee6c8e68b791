#!/usr/bin/env bash
# The whole kfsql test suite, on a fresh machine or a warm one:
#   1. installs what is missing (the Tansu broker via cargo, the psql client via apt),
#   2. builds once (debug) and runs unit tests and the integration suites against the in-process mock cluster,
#   3. starts Tansu (SQLite engine) on a free port and runs the broker suites against it,
#   4. drives the real `kfsql` binary (over a fresh Tansu holding the fraud demo) with psql, pgjdbc (a Java program), node-pg, the Python clients (psycopg 3,
#      psycopg2, SQLAlchemy, pandas), Spark over JDBC, and replays the captured client traffic of
#      ../shared/pg-client-corpus (when present),
#   5. stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
log() { printf '\n==> %s\n' "$*"; }

# --- 1. tools -------------------------------------------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  log "installing tansu 0.6.0 (one-time, ~20 min on 2 cores)"
  cargo install tansu --version 0.6.0 --locked --features libsql
fi
if ! command -v psql >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1 ||
  [ ! -f /usr/share/java/postgresql.jar ] || ! command -v npm >/dev/null 2>&1; then
  log "installing psql, openssl, pgjdbc, Java and node"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql-client openssl libpostgresql-jdbc-java \
    default-jdk-headless nodejs npm >/dev/null
fi

if ! python3 -c 'import psycopg, psycopg2, sqlalchemy, pandas, pyspark' >/dev/null 2>&1; then
  log "installing the Python clients (psycopg 3, psycopg2, SQLAlchemy 2, pandas, pyspark)"
  python3 -m pip install -q 'psycopg[binary]' psycopg2-binary 'sqlalchemy>=2' pandas 'pyspark==4.3.0'
fi
NODE_DIR="$ROOT/target/node-clients"
if [ ! -d "$NODE_DIR/node_modules/pg" ]; then
  log "installing node-postgres"
  mkdir -p "$NODE_DIR" && (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund pg@8 >/dev/null)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

WORK=$(mktemp -d -t kfsql-test.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_tansu() { # $1 = data dir, $2 = port; prints the pid
  mkdir -p "$1"
  (cd "$1" && exec tansu broker --listener-url "tcp://127.0.0.1:$2" --advertised-listener-url "tcp://127.0.0.1:$2" \
      --storage-engine sqlite://tansu.db >"$1/tansu.log" 2>&1) &
  echo $!
}
wait_port() { # $1 = port
  for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on port $1" >&2; return 1
}

# --- 2. build once, then unit + mock-cluster suites ------------------------------------------------------------
log "building (debug)"
cargo build --lib --bins --tests --examples
log "unit tests and integration tests on the in-process mock cluster"
cargo test --lib --bins --tests

# --- 3. the broker suites against Tansu --------------------------------------------------------------------------
TANSU_PORT=$(free_port)
PIDS+=("$(start_tansu "$WORK/tansu" "$TANSU_PORT")")
wait_port "$TANSU_PORT"
log "integration tests against Tansu on 127.0.0.1:$TANSU_PORT"
KFSQL_TEST_BROKERS="127.0.0.1:$TANSU_PORT" KFSQL_REQUIRE_BROKER=1 KFSQL_TANSU_BIN="$(command -v tansu)" \
  cargo test --test kafka_tables --test slt --test server --test asof --test latest --test pipeline

# --- 4. the real binary, driven by psql ---------------------------------------------------------------------------
log "psql against the kfsql binary (the fraud demo loaded into a fresh Tansu)"
CLIENT_TANSU_PORT=$(free_port)
PIDS+=("$(start_tansu "$WORK/tansu-clients" "$CLIENT_TANSU_PORT")")
wait_port "$CLIENT_TANSU_PORT"
PG_PORT=$(free_port)
./target/debug/kfsql serve --listen "127.0.0.1:$PG_PORT" --brokers "127.0.0.1:$CLIENT_TANSU_PORT" --demo \
  --demo-transactions 5000 >"$WORK/kfsql.log" 2>&1 &
PIDS+=("$!")
wait_port "$PG_PORT"
PSQL=(psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U kfsql -d kfsql -v ON_ERROR_STOP=1)
check() { # $1 = description, $2 = expected substring, rest = psql args
  local what=$1 want=$2; shift 2
  local got
  if ! got=$("${PSQL[@]}" "$@" 2>&1) || ! grep -qF -- "$want" <<<"$got"; then
    echo "psql check FAILED: $what: expected '$want' in:"; echo "$got"; exit 1
  fi
  echo "psql check ok: $what"
}
check '\dt lists the Kafka tables' 'transactions' -c '\dt'
check '\d shows columns and types' 'timestamp without time zone' -c '\d transactions'
check '\d shows metadata columns' '_offset' -c '\d transactions'
check '\dn lists the schemas' 'latest' -c '\dn'
check '\l lists the database' 'kfsql' -c '\l'
check '\dt+, \dn+, \l+ (sizes, descriptions, privileges)' 'user_txn_features' -c '\dn+' -c '\l+' -c '\dt+'
check 'DECLARE / FETCH / CLOSE a cursor' 't1' -At -c 'BEGIN' \
  -c 'DECLARE c CURSOR FOR SELECT txn_id FROM transactions ORDER BY txn_id' -c 'FETCH 2 FROM c' -c 'CLOSE c' -c 'COMMIT'
check 'result columns carry PostgreSQL names' 'count' -c 'SELECT count(*) FROM labels'
check 'count over pg-wire' '5000' -At -c 'SELECT count(*) FROM transactions'
check 'EXPLAIN shows the partitions read' 'partitions=1/4' -c "EXPLAIN SELECT * FROM transactions WHERE user_id = 'u42'"
got=$("${PSQL[@]}" -c '\set VERBOSITY verbose' -c 'SELECT * FROM nope' 2>&1 || true)
grep -qF '42P01' <<<"$got" || { echo "psql check FAILED: errors carry SQLSTATE: $got"; exit 1; }
echo "psql check ok: errors carry SQLSTATE ($got)"
check 'latest view point lookup' 'u42' -At -c "SELECT user_id FROM latest.transactions WHERE user_id = 'u42'"
check '\dt latest.* lists the online views' 'transactions' -c '\dt latest.*'
check 'freshness shows the view ready' 't|' -At -c "SELECT ready, keys FROM kfsql.freshness WHERE table_name = 'transactions'"
check 'the fraud example queries run' 'misrouted' -e -f sql/fraud/queries.sql
check 'the feature pipelines run' 'user_txn_features|running|0' -At -c 'SELECT name, state, input_lag FROM kfsql.pipelines'
check 'SHOW MATERIALIZED VIEWS' 'user_daily_spend' -c 'SHOW MATERIALIZED VIEWS'
check 'online features from a pipeline' 't' -At -c 'SELECT count(*) > 0 FROM latest.user_txn_features'
# (not quiet: the COPY's command tag carries the row count)
got=$(psql -X -h 127.0.0.1 -p "$PG_PORT" -U kfsql -d kfsql -v ON_ERROR_STOP=1 -f sql/fraud/training_set.sql 2>&1) &&
  grep -qF '(10 rows)' <<<"$got" && grep -qx 'COPY 5000' <<<"$got" ||
  { echo "psql check FAILED: the training set joins labels to features as of their time: $got"; exit 1; }
echo "psql check ok: the training set joins labels to features as of their time (COPY 5000)"
echo "psql: 19 passed, 0 failed"
log "Python clients against the same server"
python3 tests/clients/python_clients.py "host=127.0.0.1 port=$PG_PORT user=kfsql dbname=kfsql" 5000
log "pgjdbc (a Java program) against the same server"
java -cp /usr/share/java/postgresql.jar tests/clients/JdbcClient.java \
  "jdbc:postgresql://127.0.0.1:$PG_PORT/kfsql?user=kfsql" 5000
log "node-postgres against the same server"
NODE_PATH="$NODE_DIR/node_modules" node tests/clients/node_client.js "postgresql://kfsql@127.0.0.1:$PG_PORT/kfsql" 5000
log "Spark over JDBC against the same server"
python3 tests/clients/spark_client.py 127.0.0.1 "$PG_PORT" /usr/share/java/postgresql.jar
CORPUS="$ROOT/../shared/pg-client-corpus"
if [ -d "$CORPUS" ]; then
  log "replaying the client traffic captured from PostgreSQL 15 ($CORPUS)"
  python3 tests/clients/corpus_replay.py "host=127.0.0.1 port=$PG_PORT user=kfsql dbname=kfsql" "$CORPUS"
fi

log "psql against kfsql with SCRAM passwords, a read-only user and TLS (a throwaway self-signed certificate)"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/tls.key" -out "$WORK/tls.crt" -days 1 -subj "/CN=localhost" 2>/dev/null
printf 'alice:s3cret\nbob:pw:readonly\n' >"$WORK/users"
SEC_PORT=$(free_port)
./target/debug/kfsql serve --listen "127.0.0.1:$SEC_PORT" --demo-transactions 100 --users-file "$WORK/users" \
  --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key" >"$WORK/kfsql-sec.log" 2>&1 &
PIDS+=("$!")
wait_port "$SEC_PORT"
conn() { echo "host=127.0.0.1 port=$SEC_PORT dbname=kfsql sslmode=require user=$1"; }
got=$(PGPASSWORD=s3cret psql -X -At "$(conn alice)" -c '\conninfo' -c 'SELECT count(*) FROM transactions' 2>&1)
grep -qF 'SSL connection' <<<"$got" && grep -qx '100' <<<"$got" || { echo "psql check FAILED: TLS + password: $got"; exit 1; }
echo "psql check ok: TLS and SCRAM password"
got=$(PGPASSWORD=wrong psql -X -At "$(conn alice)" -c 'SELECT 1' 2>&1 || true)
grep -qi 'password authentication failed' <<<"$got" || { echo "psql check FAILED: wrong password: $got"; exit 1; }
echo "psql check ok: a wrong password is refused"
got=$(PGPASSWORD=pw psql -X -At "$(conn bob)" -c 'DROP TABLE labels' 2>&1 || true)
grep -qF 'read-only' <<<"$got" || { echo "psql check FAILED: read-only user: $got"; exit 1; }
echo "psql check ok: the read-only user cannot drop tables"

log "all tests passed"
