#!/usr/bin/env bash
# The whole kfsql test suite, on a fresh machine or a warm one (`.ci/run` calls it):
#   1. installs what is missing, each piece on its own, and says what it installs: Debian packages (psql, openssl,
#      Java, Maven, Node.js) only where the command is absent, Apache Kafka 4.4 and pgjdbc through Maven into
#      target/, the Python clients into a virtual environment under target/venv, node-pg under target/node-clients;
#   2. builds once (debug) and runs unit tests and every integration suite on the in-process mock cluster;
#   3. starts Apache Kafka (scripts/kafka.sh: one KRaft node on free loopback ports) and runs the broker suites
#      against it; the tests that kill brokers start clusters of their own (1 or 3 nodes) through the same script;
#   4. drives the real `kfsql` binary, serving the fraud demo from a fresh Kafka, with psql, pgjdbc, node-pg, the
#      Python clients (psycopg 3, psycopg2, SQLAlchemy, pandas), ADBC Flight SQL and pyarrow.flight on its Arrow
#      Flight SQL endpoint, Spark over JDBC, and replays the captured client
#      traffic in tests/clients/corpus;
#   5. stops everything it started and prints the wall time of each phase.
# Every suite prints its own counts; any failure, or a suite that cannot run, fails the whole script.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export PATH="$HOME/.cargo/bin:$PATH"
log() { printf '\n==> %s\n' "$*"; }
PHASE_NAMES=() PHASE_SECS=() PHASE_START=$SECONDS PHASE_NAME=""
phase() { # closes the running phase, opens the next
  if [ -n "$PHASE_NAME" ]; then PHASE_NAMES+=("$PHASE_NAME"); PHASE_SECS+=($((SECONDS - PHASE_START))); fi
  PHASE_NAME=$1 PHASE_START=$SECONDS
  [ -n "$1" ] && log "$1"
  return 0
}
print_phases() {
  phase ""
  echo; echo "wall time per phase:"
  for i in "${!PHASE_NAMES[@]}"; do printf '  %5ss  %s\n' "${PHASE_SECS[$i]}" "${PHASE_NAMES[$i]}"; done
}

# --- 1. tools ------------------------------------------------------------------------------------------------------
phase "tools: installing what is missing"
command -v cargo >/dev/null || { echo "Rust (cargo) is needed: install it with rustup" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
APT=()
command -v psql >/dev/null || APT+=(postgresql-client)
command -v openssl >/dev/null || APT+=(openssl)
command -v javac >/dev/null || APT+=(default-jdk-headless)
command -v mvn >/dev/null || APT+=(maven)
command -v node >/dev/null || APT+=(nodejs) # Node.js brings its own npm; Debian's npm only beside Debian's nodejs
python3 -c 'import venv, ensurepip' 2>/dev/null || APT+=(python3-venv)
if [ ${#APT[@]} -gt 0 ]; then
  echo "installing with apt: ${APT[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT[@]}" >/dev/null
fi
if ! command -v npm >/dev/null; then
  # Debian's npm only beside the Debian nodejs just installed: a Node.js that came without npm is not ours to mend
  if [[ " ${APT[*]} " != *" nodejs "* ]]; then
    echo "npm is missing beside $(command -v node): install Node.js with its own npm" >&2; exit 1
  fi
  echo "installing with apt: npm (Debian's, beside Debian's nodejs)"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi

scripts/kafka.sh fetch # Apache Kafka 4.4 into target/kafka/lib, once
JARS="$ROOT/target/client-jars"
if [ ! -f "$JARS/postgresql-42.7.14.jar" ]; then
  echo "installing with Maven: pgjdbc 42.7.14 into $JARS"
  mvn -q -B -Dstyle.color=never -f tests/clients/pom.xml -Dmaven.repo.local="$ROOT/target/m2" dependency:copy-dependencies \
    -DoutputDirectory="$JARS"
fi
PGJDBC="$JARS/postgresql-42.7.14.jar"
STREAMS_APP="$ROOT/examples/kafka-streams"
if [ ! -f "$STREAMS_APP/target/classes/kfsql/examples/UserTxnFeatures.class" ] ||
  [ -n "$(find "$STREAMS_APP/src" "$STREAMS_APP/pom.xml" -newer "$STREAMS_APP/target/classes/kfsql/examples/UserTxnFeatures.class")" ]; then
  echo "building with Maven: the Kafka Streams example (examples/kafka-streams)"
  mvn -q -B -Dstyle.color=never -f "$STREAMS_APP/pom.xml" -Dmaven.repo.local="$ROOT/target/m2" package
fi
export KFSQL_STREAMS_CP="$STREAMS_APP/target/classes:$STREAMS_APP/target/lib/*"

VENV="$ROOT/target/venv"
PY_PACKAGES=('psycopg[binary]==3.3.*' 'psycopg2-binary==2.9.*' 'sqlalchemy==2.*' 'pandas==3.*' 'pyspark==4.3.0'
  'pyarrow==26.*' 'polars==2.*' 'adbc-driver-manager==1.13.*' 'adbc-driver-flightsql==1.13.*')
if ! "$VENV/bin/python" -c 'import psycopg, psycopg2, sqlalchemy, pandas, pyspark, pyarrow, polars, adbc_driver_flightsql' \
  2>/dev/null; then
  echo "installing with pip into $VENV: ${PY_PACKAGES[*]}"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
PY="$VENV/bin/python"

NODE_DIR="$ROOT/target/node-clients"
if [ ! -d "$NODE_DIR/node_modules/pg" ]; then
  echo "installing with npm into $NODE_DIR: pg@8"
  mkdir -p "$NODE_DIR" && (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund pg@8 >/dev/null)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { # $1 = port
  for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on port $1" >&2; return 1
}

WORK=$(mktemp -d -t kfsql-test.XXXXXX)
PIDS=() CLUSTERS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for c in "${CLUSTERS[@]:-}"; do [ -n "$c" ] && scripts/kafka.sh stop "$c" || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- 2. build once, then unit + mock-cluster suites ----------------------------------------------------------------
phase "building (debug)"
cargo build --lib --bins --tests --examples
# KFSQL_TEST_CLIENTS_ONLY=1 skips straight to the real-binary phase (for iterating on the client checks).
if [ -z "${KFSQL_TEST_CLIENTS_ONLY:-}" ]; then
phase "unit tests and integration tests on the in-process mock cluster"
cargo test --lib --bins --tests

# --- 3. the broker suites against Apache Kafka -----------------------------------------------------------------------
phase "integration tests against Apache Kafka 4.4 (one KRaft node)"
CLUSTERS+=("$WORK/kafka")
BROKERS=$(scripts/kafka.sh start "$WORK/kafka")
echo "Apache Kafka on $BROKERS"
KFSQL_TEST_BROKERS="$BROKERS" KFSQL_REQUIRE_BROKER=1 KFSQL_OWN_KAFKA=1 \
  cargo test --test kafka_tables --test slt --test server --test asof --test latest --test pipeline --test cluster \
  --test streams --test flight
scripts/kafka.sh stop "$WORK/kafka"
fi

# --- 4. the real binary, driven by real clients -----------------------------------------------------------------------
phase "psql against the kfsql binary (the fraud demo loaded into a fresh Apache Kafka)"
CLUSTERS+=("$WORK/kafka-clients")
CLIENT_BROKERS=$(scripts/kafka.sh start "$WORK/kafka-clients")
PG_PORT=$(free_port) FLIGHT_PORT=$(free_port)
./target/debug/kfsql serve --listen "127.0.0.1:$PG_PORT" --flight-listen "127.0.0.1:$FLIGHT_PORT" \
  --brokers "$CLIENT_BROKERS" --demo --demo-transactions 5000 >"$WORK/kfsql.log" 2>&1 &
PIDS+=("$!")
wait_port "$PG_PORT"
PSQL=(psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U kfsql -d kfsql -v ON_ERROR_STOP=1)
PASSED=0 FAILED=0
result() { # $1 = ok?, $2 = description, $3 = detail on failure
  if [ "$1" = 0 ]; then PASSED=$((PASSED + 1)); echo "psql check ok: $2"
  else FAILED=$((FAILED + 1)); echo "psql check FAILED: $2"; printf '%s\n' "$3" | sed 's/^/    /'; fi
}
# check_eq DESC WANT ARGS…: psql -At's whole output equals WANT. check_line: one whole line of it equals WANT.
check_eq() {
  local what=$1 want=$2 got ok=1; shift 2
  got=$("${PSQL[@]}" -At "$@" 2>&1) && [ "$got" = "$want" ] && ok=0
  result $ok "$what" "want exactly: $want"$'\n'"got: $got"
}
check_line() {
  local what=$1 want=$2 got ok=1; shift 2
  got=$("${PSQL[@]}" -At "$@" 2>&1) && grep -qxF -- "$want" <<<"$got" && ok=0
  result $ok "$what" "want the line: $want"$'\n'"got: $got"
}
check_line '\dt lists the Kafka tables' 'public|transactions|table|postgres' -c '\dt'
check_line '\d shows columns and types' 'event_time|timestamp without time zone||not null|' -c '\d transactions'
check_line '\d shows metadata columns' '_offset|bigint||not null|' -c '\d transactions'
check_line '\dn lists the schemas' 'latest|postgres' -c '\dn'
check_line '\l lists the database' 'kfsql|postgres|UTF-8|en_US.UTF-8|en_US.UTF-8|||' -c '\l'
check_line '\dt+ lists sizes and descriptions' 'public|user_txn_features|table|postgres|permanent|||' -c '\dt+'
check_eq 'DECLARE / FETCH / CLOSE a cursor' $'t0\nt1' -c 'BEGIN' \
  -c 'DECLARE c CURSOR FOR SELECT txn_id FROM transactions ORDER BY txn_id' -c 'FETCH 2 FROM c' -c 'CLOSE c' -c 'COMMIT'
got=$("${PSQL[@]}" -A -c 'SELECT count(*) FROM labels' 2>&1 | head -1 || true)
result "$([ "$got" = count ] && echo 0 || echo 1)" 'result columns carry PostgreSQL names' "want the header count, got: $got"
check_eq 'count over pg-wire' '5000' -c 'SELECT count(*) FROM transactions'
got=$("${PSQL[@]}" -At -c "EXPLAIN SELECT * FROM transactions WHERE user_id = 'u42'" 2>&1 || true)
grep -qE '(^|[ ,])partitions=1/4([ ,]|$)' <<<"$got" && r=0 || r=1
result $r 'EXPLAIN shows the partitions read' "want partitions=1/4 in: $got"
got=$("${PSQL[@]}" -c '\set VERBOSITY verbose' -c 'SELECT * FROM nope' 2>&1 || true)
grep -qE '^ERROR:  42P01: ' <<<"$got" && r=0 || r=1
result $r 'errors carry SQLSTATE 42P01' "got: $got"
check_eq 'latest view point lookup' 'u42' -c "SELECT user_id FROM latest.transactions WHERE user_id = 'u42'"
check_line '\dt latest.* lists the online views' 'latest|transactions|table|postgres' -c '\dt latest.*'
check_eq 'freshness shows the view ready with every key' \
  "t|$("${PSQL[@]}" -At -c 'SELECT count(DISTINCT user_id) FROM transactions')" \
  -c "SELECT ready, keys FROM kfsql.freshness WHERE table_name = 'transactions'"
got=$("${PSQL[@]}" -e -f sql/fraud/queries.sql 2>&1) && grep -q misrouted <<<"$got" && r=0 || r=1
result $r 'the fraud example queries run' "got: $got"
check_line 'the feature pipelines run' 'user_txn_features|running|0' -c 'SELECT name, state, input_lag FROM kfsql.pipelines'
check_line 'SHOW MATERIALIZED VIEWS' 'user_daily_spend' -c 'SELECT name FROM kfsql.pipelines'
# one row per user whose newest window is within the view's 2-hour TTL (both counted in one statement)
got=$("${PSQL[@]}" -At -c "SELECT (SELECT count(*) FROM latest.user_txn_features) AS online, (SELECT count(*) FROM \
  (SELECT max(window_end) AS newest FROM user_txn_features GROUP BY user_id) AS w \
  WHERE newest >= now() - INTERVAL '2 hours') AS oracle" 2>&1 || true)
[ "${got%%|*}" = "${got##*|}" ] && [ "${got%%|*}" -gt 0 ] 2>/dev/null && r=0 || r=1
result $r 'online features from a pipeline: every user with a window in the TTL, once' "got (latest|oracle): $got"
# (not quiet: the COPY's command tag carries the row count)
got=$(psql -X -h 127.0.0.1 -p "$PG_PORT" -U kfsql -d kfsql -v ON_ERROR_STOP=1 -f sql/fraud/training_set.sql 2>&1) &&
  grep -qxF '(10 rows)' <<<"$got" && grep -qx "COPY $("${PSQL[@]}" -At -c 'SELECT count(*) FROM labels')" <<<"$got" && r=0 || r=1
result $r 'the training set joins every label to features as of its time' "got: $got"
echo "psql: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]

phase "Python clients against the same server"
"$PY" tests/clients/python_clients.py "host=127.0.0.1 port=$PG_PORT user=kfsql dbname=kfsql" 5000
phase "Arrow Flight SQL clients (ADBC into pyarrow, pandas and polars; pyarrow.flight) against the same server"
"$PY" tests/clients/flight_client.py open "grpc://127.0.0.1:$FLIGHT_PORT" "host=127.0.0.1 port=$PG_PORT user=kfsql dbname=kfsql"
phase "pgjdbc (a Java program) against the same server"
java -cp "$PGJDBC" tests/clients/JdbcClient.java "jdbc:postgresql://127.0.0.1:$PG_PORT/kfsql?user=kfsql" 5000
phase "node-postgres against the same server"
NODE_PATH="$NODE_DIR/node_modules" node tests/clients/node_client.js "postgresql://kfsql@127.0.0.1:$PG_PORT/kfsql" 5000
phase "Spark over JDBC against the same server, and a partition-wise ASOF training set spread over two servers"
# a second server on the same Kafka, with a catalog of its own (so it runs none of the first one's pipelines)
PG2_PORT=$(free_port)
./target/debug/kfsql serve --listen "127.0.0.1:$PG2_PORT" --brokers "$CLIENT_BROKERS" --no-demo \
  --catalog-topic kfsql-second-catalog >"$WORK/kfsql-2.log" 2>&1 &
PIDS+=("$!")
wait_port "$PG2_PORT"
psql -X -q -h 127.0.0.1 -p "$PG2_PORT" -U kfsql -d kfsql -v ON_ERROR_STOP=1 -f sql/fraud/tables.sql
"$PY" tests/clients/spark_client.py 127.0.0.1 "$PG_PORT" "$PGJDBC" "$PG2_PORT"
phase "replaying the client traffic captured from PostgreSQL 15 (tests/clients/corpus)"
"$PY" tests/clients/corpus_replay.py "host=127.0.0.1 port=$PG_PORT user=kfsql dbname=kfsql" tests/clients/corpus

phase "psql against kfsql with SCRAM passwords, a read-only user and TLS (a throwaway self-signed certificate)"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/tls.key" -out "$WORK/tls.crt" -days 1 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
printf 'alice:s3cret\nbob:pw:readonly\n' >"$WORK/users"
SEC_PORT=$(free_port) SEC_FLIGHT_PORT=$(free_port)
./target/debug/kfsql serve --listen "127.0.0.1:$SEC_PORT" --flight-listen "127.0.0.1:$SEC_FLIGHT_PORT" \
  --demo-transactions 100 --users-file "$WORK/users" \
  --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key" >"$WORK/kfsql-sec.log" 2>&1 &
PIDS+=("$!")
wait_port "$SEC_PORT"
PASSED=0 FAILED=0
conn() { echo "host=127.0.0.1 port=$SEC_PORT dbname=kfsql sslmode=require user=$1"; }
got=$(PGPASSWORD=s3cret psql -X -At "$(conn alice)" -c '\conninfo' -c 'SELECT count(*) FROM transactions' 2>&1) &&
  grep -qF 'SSL connection' <<<"$got" && [ "$(tail -1 <<<"$got")" = 100 ] && r=0 || r=1
result $r 'TLS and SCRAM password' "got: $got"
got=$(PGPASSWORD=wrong psql -X -At "$(conn alice)" -c 'SELECT 1' 2>&1 || true)
grep -qi 'password authentication failed for user "alice"' <<<"$got" && r=0 || r=1
result $r 'a wrong password is refused' "got: $got"
got=$(PGPASSWORD=pw psql -X -At "$(conn bob)" -c 'DROP TABLE labels' 2>&1 || true)
grep -qF 'read-only' <<<"$got" && [ "$(PGPASSWORD=s3cret psql -X -At "$(conn alice)" -c 'SELECT count(*) FROM labels')" = 100 ] && r=0 || r=1
result $r 'the read-only user cannot drop tables (labels still has its 100 rows)' "got: $got"
echo "security: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
phase "Arrow Flight SQL with the same users, read-only rights and certificate"
"$PY" tests/clients/flight_client.py secure "grpc+tls://localhost:$SEC_FLIGHT_PORT" "$WORK/tls.crt"

phase "reliability: pg-wire fuzzing, bad SQL, vanishing connections, 100 clients, lookups beside runaways"
REL_PORT=$(free_port) REL_METRICS=$(free_port)
./target/debug/kfsql serve --listen "127.0.0.1:$REL_PORT" --metrics-listen "127.0.0.1:$REL_METRICS" \
  --demo-transactions 2000 >"$WORK/kfsql-rel.log" 2>&1 &
REL_PID=$!
PIDS+=("$REL_PID")
wait_port "$REL_PORT"
"$PY" tests/reliability/reliability.py 127.0.0.1 "$REL_PORT" "$REL_PID" "$WORK/kfsql-rel.log" "$REL_METRICS"

print_phases
log "all tests passed"
