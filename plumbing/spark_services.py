"""Spark services on this machine, from the pyspark package: a standalone cluster and a Spark Connect server.

    with standalone_cluster(log_dir, workers=2) as master:   # spark://127.0.0.1:PORT
        ...
    with connect_server(log_dir, master="local[2]") as url:  # sc://127.0.0.1:PORT
        ...

The pip package ships no start-master.sh: the master and workers run through `bin/spark-class`
(`org.apache.spark.deploy.master.Master`, `...deploy.worker.Worker`), the Connect server through
`sbin/start-connect-server.sh --wait` (in the foreground, so its process is ours). Each service
binds 127.0.0.1 on a free port, runs in its own process group with its log under `log_dir`, is
waited for until it answers (ServiceError with the log's tail if it exits or times out), and is
stopped afterwards by its own process group id (SIGTERM, then SIGKILL).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from plumbing.errors import StageError


class ServiceError(StageError):
    """A Spark service that did not come up (the message holds its log's tail)."""


def spark_home() -> Path:
    """The pyspark package's directory: bin/, sbin/ and jars/ of the Spark it bundles."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def service_env(log_dir: Path) -> dict[str, str]:
    """The services' environment: bound to 127.0.0.1, small daemons, logs and work dirs under log_dir."""
    return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_DAEMON_MEMORY": "512m", "SPARK_LOG_DIR": str(log_dir), "SPARK_PID_DIR": str(log_dir),
            "SPARK_WORKER_DIR": str(log_dir / "work")}


def tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a service's process group (its own id): SIGTERM, then SIGKILL if any of it outlives `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if group_gone(proc, timeout):
            return


def group_gone(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to `timeout` for every process of proc's group to exit; True if they did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap our own child
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def service(name: str, argv: list[str], log_dir: Path, ready: Callable[[], bool], timeout: float) -> Iterator[None]:
    """Run `argv` in its own process group (output to log_dir/<name>.log) until `ready()`; stop it on exit."""
    log = Path(log_dir) / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=service_env(Path(log_dir)), start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise ServiceError(f"{name} exited with code {proc.returncode} before it was ready; {log}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{name} not ready after {timeout:.0f}s; {log}:\n{tail(log)}")
            time.sleep(0.5)
        yield
    finally:
        stop(proc)


def alive_workers(ui_port: int) -> int:
    """Workers the standalone master's web UI lists as ALIVE (0 while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as response:
            state = json.load(response)
    except (OSError, ValueError):
        return 0
    return sum(w.get("state") == "ALIVE" for w in state.get("workers", []))


@contextlib.contextmanager
def standalone_cluster(log_dir: str | os.PathLike, workers: int = 2, cores: int = 1, memory: str = "1g",
                       timeout: float = 120) -> Iterator[str]:
    """A standalone master and `workers` workers (`cores` and `memory` each) on 127.0.0.1; yields its URL."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, ui_port = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        stack.enter_context(service("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host",
                                               "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)],
                                    log_dir, lambda: port_open(port), timeout))
        for i in range(workers):
            argv = [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                    "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()),
                    "--work-dir", str(log_dir / f"worker-{i}")]
            stack.enter_context(service(f"worker-{i}", argv, log_dir,
                                        lambda n=i + 1: alive_workers(ui_port) >= n, timeout))
        yield url


@contextlib.contextmanager
def connect_server(log_dir: str | os.PathLike, master: str = "local[2]", driver_memory: str = "1g",
                   timeout: float = 120) -> Iterator[str]:
    """A Spark Connect server (JVM Spark on `master`) on 127.0.0.1; yields its sc:// URL."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [str(spark_home() / "sbin" / "start-connect-server.sh"), "--wait", "--master", master,
            "--driver-memory", driver_memory,
            "--conf", f"spark.connect.grpc.binding.port={port}",
            "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf", "spark.ui.enabled=false"]
    with service("connect-server", argv, log_dir, lambda: port_open(port), timeout):
        yield f"sc://127.0.0.1:{port}"
