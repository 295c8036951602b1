"""The Spark session every Spark stage uses; master from params (local[*], spark://, yarn, k8s://)."""
from __future__ import annotations

import contextlib
import os
import sys


def get_spark(master: str = "local[*]", app_name: str = "relate", shuffle_partitions: int = 8, driver_memory: str = "4g"):
    """Create (or reuse) a SparkSession set up for this pipeline."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.ansi.enabled", "false")
        # few, small shuffles on a few cores: AQE coalesces them and picks broadcast joins
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.adaptive.coalescePartitions.enabled", "true")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


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
