"""Spark 4 (pyspark) reading kfsql over JDBC (pgjdbc), the way to build big training sets in Spark: one task per
Kafka partition with partitionColumn=_partition. Run by scripts/test.sh:

    python3 tests/clients/spark_client.py 127.0.0.1 5433 /usr/share/java/postgresql.jar

Checks that the read has one Spark partition per Kafka partition, each holding exactly that Kafka partition's rows;
that kfsql prunes each task's query to its partition (EXPLAIN of the query Spark sends); that the row count equals
the topic's; and that the `query` option and a pushed-down filter work. The exit status is the number of failures.
"""

import sys

import psycopg
from pyspark.sql import SparkSession
from pyspark.sql.functions import col

host, port, jar = sys.argv[1], sys.argv[2], sys.argv[3]
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
spark.stop()
print(f"spark: {passes} passed, {failures} failed")
sys.exit(min(failures, 100) if failures or passes else 1)
