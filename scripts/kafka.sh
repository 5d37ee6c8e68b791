#!/usr/bin/env bash
# Apache Kafka 4.4 in KRaft mode on loopback, from its Maven artifacts (no tarball): for the test suite and for people.
#
#   scripts/kafka.sh fetch                     copy Kafka and its dependencies into target/kafka/lib (Maven, once)
#   scripts/kafka.sh start [-n N] [DIR]        start N combined broker+controller nodes (1 or 3) in DIR, or restart
#                                              the cluster already formatted there on the same ports; prints the
#                                              bootstrap list. DIR defaults to target/kafka/cluster.
#   scripts/kafka.sh stop [DIR]                stop every node of DIR's cluster (SIGTERM, then SIGKILL)
#   scripts/kafka.sh kill NODE [DIR]           SIGKILL one node (1-based), as a crash would
#   scripts/kafka.sh revive NODE [DIR]         start that node again, same port and data
#   scripts/kafka.sh bootstrap [DIR]           print the bootstrap list
#
# A 3-node cluster replicates new topics 3 times with min.insync.replicas=2. Each node's log is DIR/node-N/kafka.log.
# Topics keep every message unless they set retention themselves (log.retention.ms=-1): the suites produce messages
# with historic timestamps, which Kafka's default 7-day retention would delete within seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIB="$ROOT/target/kafka/lib"
KAFKA_VERSION=4.4.0
HEAP=${KFSQL_KAFKA_HEAP:-512m}

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  [ -f "$LIB/kafka_2.13-$KAFKA_VERSION.jar" ] && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Apache Kafka"
  echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION and its dependencies with Maven into $LIB" >&2
  mkdir -p "$ROOT/target"
  mvn -q -B -Dstyle.color=never -f "$ROOT/scripts/kafka/pom.xml" -Dmaven.repo.local="$ROOT/target/m2" \
    dependency:copy-dependencies -DoutputDirectory="$LIB.partial" >&2
  rm -rf "$LIB" && mv "$LIB.partial" "$LIB"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

java_cmd() { # $1 = node dir: sets JAVA to the JVM command line every Kafka process of that node runs with
  JAVA=(java -Xmx"$HEAP" -Xms128m -XX:+UseSerialGC -Dlog4j2.configurationFile="$1/log4j2.properties"
    -Dkafka.logs.dir="$1" -cp "$LIB/*")
}

write_config() { # $1 = dir, $2 = node id, $3 = node count
  local dir=$1 id=$2 n=$3 d="$1/node-$2" rf=1 isr=1 voters="" i
  [ "$n" -ge 3 ] && rf=3 && isr=2
  for i in $(seq 1 "$n"); do voters+="${voters:+,}$i@127.0.0.1:$(cat "$dir/node-$i/controller.port")"; done
  local port cport
  port=$(cat "$d/port"); cport=$(cat "$d/controller.port")
  cat >"$d/server.properties" <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
log.retention.ms=-1
log.segment.bytes=16777216
log.retention.check.interval.ms=2000
log.cleaner.backoff.ms=1000
EOF
  cat >"$d/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $d/kafka.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.org.name = org.apache.kafka
logger.org.level = INFO
EOF
}

start_node() { # $1 = dir, $2 = node id
  local d="$1/node-$2"
  if [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then return 0; fi
  local mark
  mark=$(wc -l <"$d/kafka.log" 2>/dev/null || echo 0)
  echo "$mark" >"$d/log.mark"
  java_cmd "$d"
  nohup "${JAVA[@]}" kafka.Kafka "$d/server.properties" >"$d/stdout.log" 2>&1 </dev/null &
  echo $! >"$d/pid"
}

wait_node() { # $1 = dir, $2 = node id
  local d="$1/node-$2" mark
  mark=$(cat "$d/log.mark" 2>/dev/null || echo 0)
  for _ in $(seq 1 1200); do
    if tail -n +"$((mark + 1))" "$d/kafka.log" 2>/dev/null | grep -q 'Kafka Server started'; then return 0; fi
    kill -0 "$(cat "$d/pid")" 2>/dev/null || { tail -n 30 "$d/stdout.log" "$d/kafka.log" >&2 || true; die "node $2 exited"; }
    sleep 0.1
  done
  tail -n 30 "$d/kafka.log" >&2 || true
  die "node $2 did not start within 120 s"
}

bootstrap() { # $1 = dir
  local n list=""
  n=$(cat "$1/nodes" 2>/dev/null) || die "no cluster in $1 (run: scripts/kafka.sh start)"
  for i in $(seq 1 "$n"); do list+="${list:+,}127.0.0.1:$(cat "$1/node-$i/port")"; done
  echo "$list"
}

start() {
  local n=1
  if [ "${1:-}" = "-n" ]; then n=$2; shift 2; fi
  local dir=${1:-$ROOT/target/kafka/cluster}
  case $n in 1 | 3) ;; *) die "a cluster has 1 or 3 nodes, not $n" ;; esac
  fetch
  command -v java >/dev/null || die "Java 17+ is needed to run Apache Kafka"
  mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
  if [ ! -f "$dir/nodes" ]; then
    local id
    id=$(java -cp "$LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    for i in $(seq 1 "$n"); do
      mkdir -p "$dir/node-$i"
      free_port >"$dir/node-$i/port"
      free_port >"$dir/node-$i/controller.port"
    done
    for i in $(seq 1 "$n"); do
      write_config "$dir" "$i" "$n"
      java_cmd "$dir/node-$i"
      "${JAVA[@]}" kafka.tools.StorageTool format -t "$id" -c "$dir/node-$i/server.properties" >/dev/null
    done
    echo "$n" >"$dir/nodes"
  fi
  n=$(cat "$dir/nodes")
  for i in $(seq 1 "$n"); do start_node "$dir" "$i"; done
  for i in $(seq 1 "$n"); do wait_node "$dir" "$i"; done
  bootstrap "$dir" | tee "$dir/bootstrap"
}

stop_node() { # $1 = dir, $2 = node id, $3 = signal
  local pidf="$1/node-$2/pid" pid
  [ -f "$pidf" ] || return 0
  pid=$(cat "$pidf")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$3" "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidf"
}

stop() {
  local dir=${1:-$ROOT/target/kafka/cluster} n
  [ -f "$dir/nodes" ] || return 0
  n=$(cat "$dir/nodes")
  for i in $(seq 1 "$n"); do
    [ -f "$dir/node-$i/pid" ] && kill -TERM "$(cat "$dir/node-$i/pid")" 2>/dev/null || true
  done
  for i in $(seq 1 "$n"); do stop_node "$dir" "$i" TERM; done
}

cmd=${1:-}; shift || true
case $cmd in
  fetch) fetch ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  kill) stop_node "${2:-$ROOT/target/kafka/cluster}" "${1:?node}" KILL ;;
  revive) d=${2:-$ROOT/target/kafka/cluster}; start_node "$d" "${1:?node}"; wait_node "$d" "$1" ;;
  bootstrap) bootstrap "${1:-$ROOT/target/kafka/cluster}" ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
