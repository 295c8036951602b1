"""The Spark session every Spark stage uses: classic (local[*], spark://, yarn, k8s://) or Spark Connect (sc://).

Which engine runs the job, first that applies:
1. a job started by `spark-submit` keeps the master spark-submit gave it (`--master`): params
   never override it;
2. a `sc://host:port` master (params `ingest.master` or `--master`) connects to that Spark
   Connect server;
3. `SPARK_REMOTE=sc://host:port` in the environment: Spark Connect to it, whatever the params say;
4. else the classic session on the master from params.
Under Connect the server owns the cluster-level settings (memory, UI, the master behind it):
the session sets only the SQL confs the job's results depend on.
"""
from __future__ import annotations

import contextlib
import os
import sys

# SQL confs the job's output depends on: set on every session, classic or Connect.
SESSION_CONFS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.ansi.enabled": "false",
    # few, small shuffles on a few cores: AQE coalesces them and picks broadcast joins
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
}


def connect_url(master: str) -> str | None:
    """The Spark Connect URL a session for `master` goes to (sc:// master, else $SPARK_REMOTE), or None."""
    if master.startswith("sc://"):
        return master
    return os.environ.get("SPARK_REMOTE") or None


def submitted() -> bool:
    """True in a driver started by spark-submit (its JVM exists already, with spark-submit's --master)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def is_connect(spark) -> bool:
    """True for a Spark Connect session (no SparkContext, no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def get_spark(master: str = "local[*]", app_name: str = "relate", shuffle_partitions: int = 8, driver_memory: str = "4g"):
    """Create (or reuse) a SparkSession set up for this pipeline (see the module doc for which engine)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    confs = {**SESSION_CONFS, "spark.sql.shuffle.partitions": str(shuffle_partitions)}
    url = None if submitted() else connect_url(master)
    if url is not None:
        return SparkSession.builder.remote(url).config(map=confs).getOrCreate()
    builder = SparkSession.builder if submitted() else SparkSession.builder.master(master)
    spark = (builder.appName(app_name).config(map=confs)
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", driver_memory)
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def task_slots(spark, fallback: int) -> int:
    """How many tasks the session runs at once, as far as the session can tell without a SparkContext:
    `spark.default.parallelism` if set, N of a `local[N]` master (`local[*]`: this machine's CPUs),
    else `fallback` (a cluster's size is the shuffle partitions it was given)."""
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return int(configured)
    master = spark.conf.get("spark.master", None) or ""
    if master == "local":
        return 1
    if master.startswith("local["):
        n = master[len("local["):].split(",")[0].rstrip("]")
        return (os.cpu_count() or 1) if n == "*" else int(n)
    return fallback


@contextlib.contextmanager
def stage_session(master: str, app_name: str, shuffle_partitions: int):
    """The session of one stage run, stopped at the end unless it was already running
    (tests and notebooks share one session across runs)."""
    from pyspark.sql import SparkSession

    owns_session = SparkSession.getActiveSession() is None
    spark = get_spark(master, app_name, shuffle_partitions)
    try:
        yield spark
    finally:
        if owns_session:
            spark.stop()
