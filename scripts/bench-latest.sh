#!/usr/bin/env bash
# Online serving benchmark (benches/latest.rs): rebuild of 1M keys, produce -> visible latency, and 32 concurrent
# pg-wire clients doing prepared point lookups on latest.user_txn_features vs the same client code on PostgreSQL 15
# (started here, on a free port, in a throwaway data directory), printed with the QPS ratio.
#   scripts/bench-latest.sh
#   KFSQL_BENCH_KEYS=100000 KFSQL_BENCH_SECONDS=5 scripts/bench-latest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$PGBIN" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
DATA=$(mktemp -d -t kfsql-pg.XXXXXX)
# PostgreSQL refuses to run as root: run it as the postgres user when we are root
as_pg() { if [ "$(id -u)" = 0 ]; then chown -R postgres "$DATA"; runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$PGBIN/initdb" -D "$DATA" -U postgres -A trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$DATA" -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1 -c max_connections=100" -l "$DATA/log" -w start >/dev/null
trap 'as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true; rm -rf "$DATA"' EXIT
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT"
mkdir -p exports && chmod o+rx exports
KFSQL_BENCH_PG="host=127.0.0.1 port=$PORT user=postgres dbname=postgres" cargo bench ${KFSQL_BENCH_PROFILE:+--profile "$KFSQL_BENCH_PROFILE"} --bench latest 2>/dev/null
