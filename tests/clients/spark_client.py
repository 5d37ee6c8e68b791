"""Spark 4 (pyspark) reading kfsql over JDBC (pgjdbc), the way to build big training sets in Spark: one task per
Kafka partition with partitionColumn=_partition. Run by scripts/test.sh:

    python3 tests/clients/spark_client.py 127.0.0.1 5433 /usr/share/java/postgresql.jar [SECOND_PORT]

With SECOND_PORT (a second kfsql server on the same Kafka), a point-in-time training set — an ASOF JOIN of two
Kafka tables co-partitioned by user — is computed by Spark tasks each joining one Kafka partition (partition-wise:
each task's query reads one partition of each side), half of the tasks on each server; the union must equal the
single-query answer row for row, and every label partition must have been read exactly once across the servers.

Checks that the read has one Spark partition per Kafka partition, each holding exactly that Kafka partition's rows;
that kfsql prunes each task's query to its partition (EXPLAIN of the query Spark sends); that the row count equals
the topic's; and that the `query` option and a pushed-down filter work. The exit status is the number of failures.
"""

import sys

import psycopg
from pyspark.sql import SparkSession
from pyspark.sql.functions import col

host, port, jar = sys.argv[1], sys.argv[2], sys.argv[3]
second_port = sys.argv[4] if len(sys.argv) > 4 else None
url = f"jdbc:postgresql://{host}:{port}/kfsql?user=kfsql"
failures = passes = 0


def check(what, got, want):
    global failures, passes
    if got == want:
        passes += 1
        print(f"spark check ok: {what}")
    else:
        failures += 1
        print(f"spark check FAILED: {what}: got {got!r}, want {want!r}")


with psycopg.connect(f"host={host} port={port} user=kfsql dbname=kfsql") as pg:
    per_partition = dict(pg.execute("SELECT _partition, count(*) FROM transactions GROUP BY _partition").fetchall())
    partitions = len(per_partition)
    total = sum(per_partition.values())
    over_100 = pg.execute("SELECT count(*) FROM transactions WHERE amount > 100").fetchone()[0]
    # the WHERE clauses Spark's JDBC source writes for partitionColumn (first and last bounds are open)
    pruned = []
    for p in range(partitions):
        if p == 0:
            where = '"_partition" < 1 or "_partition" is null'
        elif p == partitions - 1:
            where = f'"_partition" >= {p}'
        else:
            where = f'"_partition" >= {p} AND "_partition" < {p + 1}'
        plan = "\n".join(r[-1] for r in pg.execute(f"EXPLAIN SELECT * FROM transactions WHERE {where}").fetchall())
        pruned.append(f"partitions=1/{partitions}" in plan)

spark = (
    SparkSession.builder.master(f"local[{partitions}]")
    .appName("kfsql-spark-check")
    .config("spark.jars", jar)
    .config("spark.ui.enabled", "false")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")


def reader():
    return spark.read.format("jdbc").option("url", url).option("driver", "org.postgresql.Driver")


df = (
    reader()
    .option("dbtable", "transactions")
    .option("partitionColumn", "_partition")
    .option("lowerBound", "0")
    .option("upperBound", str(partitions))
    .option("numPartitions", str(partitions))
    .option("fetchsize", "1000")
    .load()
)
check("one Spark partition per Kafka partition", df.rdd.getNumPartitions(), partitions)
sizes = df.rdd.glom().map(len).collect()
check("each task reads exactly its Kafka partition's rows", sizes, [per_partition[p] for p in range(partitions)])
check("kfsql reads one Kafka partition for each task's query", pruned, [True] * partitions)
check("row count equals the topic's", df.count(), total)
check("a pushed-down filter", df.filter(col("amount") > 100).count(), over_100)
q = reader().option("query", "SELECT user_id, count(*) AS n FROM transactions GROUP BY user_id").load()
check("the query option", q.agg({"n": "sum"}).collect()[0][0], total)

# --- a training set bigger than one machine: partition-wise ASOF joins, spread over two servers --------------------
# the user's previous transaction as of each label (labels and transactions are both keyed, so partitioned, by user)
ASOF = """SELECT l.txn_id, l._partition, l.is_fraud, t.txn_id AS prev_txn, t.amount AS prev_amount, t.event_time AS prev_time
FROM labels l ASOF JOIN transactions t MATCH_CONDITION (l.event_time > t.event_time) ON l.user_id = t.user_id"""


def where(p):  # what Spark's JDBC source writes for partitionColumn=_partition, bounds 0..partitions
    if p == 0:
        return '"_partition" < 1 or "_partition" is null'
    if p == partitions - 1:
        return f'"_partition" >= {p}'
    return f'"_partition" >= {p} AND "_partition" < {p + 1}'


if second_port:
    urls = [url, f"jdbc:postgresql://{host}:{second_port}/kfsql?user=kfsql"]
    dsns = [f"host={host} port={port} user=kfsql dbname=kfsql", f"host={host} port={second_port} user=kfsql dbname=kfsql"]

    def label_reads():  # (scans, messages) of labels on each server
        out = []
        for d in dsns:
            with psycopg.connect(d) as c:
                out.append(c.execute("SELECT scans, messages FROM kfsql.table_stats WHERE table_name = 'labels'").fetchone())
        return out

    with psycopg.connect(dsns[0]) as pg:
        want = sorted(pg.execute(ASOF).fetchall())
        label_total = pg.execute("SELECT count(*) FROM labels").fetchone()[0]
        plans = []
        for p in range(partitions):
            plan = "\n".join(r[-1] for r in pg.execute(f"EXPLAIN SELECT * FROM ({ASOF}) q WHERE {where(p)}").fetchall())
            plans.append("partition_wise=[1 Kafka partitions" in plan and f"topic=labels, partitions=1/{partitions}" in plan)
    check("each task's ASOF query joins one Kafka partition of each side (EXPLAIN)", plans, [True] * partitions)

    # the partitionColumn read of the query, on one server (Spark takes a partitioned query as a dbtable subquery)
    asof_df = (
        reader().option("dbtable", f"({ASOF}) AS training").option("partitionColumn", "_partition").option("lowerBound", "0")
        .option("upperBound", str(partitions)).option("numPartitions", str(partitions)).load()
    )
    check("the ASOF query in one Spark partition per Kafka partition", asof_df.rdd.getNumPartitions(), partitions)
    check("its union equals the single-query answer row for row", sorted(tuple(r) for r in asof_df.collect()), want)

    # the same tasks spread over both servers: the first half of the partitions on one, the rest on the other
    before = label_reads()
    half = partitions // 2
    frames = [
        spark.read.jdbc(u, f"({ASOF}) AS training", predicates=[where(p) for p in ps],
                        properties={"driver": "org.postgresql.Driver"})
        for u, ps in ((urls[0], range(half)), (urls[1], range(half, partitions)))
    ]
    both = frames[0].unionByName(frames[1])
    got = sorted(tuple(r) for r in both.collect())
    after = label_reads()
    check(f"over two servers ({half} + {partitions - half} tasks): the union equals the single-query answer", got, want)
    check("both servers scanned labels", [a[0] - b[0] > 0 for a, b in zip(after, before)], [True, True])
    check("every label was read exactly once across the two servers", sum(a[1] - b[1] for a, b in zip(after, before)),
          label_total)
    check("the training set is not empty", len(want) > 0, True)

spark.stop()
print(f"spark: {passes} passed, {failures} failed")
sys.exit(min(failures, 100) if failures or passes else 1)
