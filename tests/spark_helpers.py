"""A real Spark standalone cluster on loopback for the tests: a master and workers started from the pyspark
package's own launcher (``bin/spark-class``), stopped at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.kafka_helpers import free_port


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _environment(logs: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(spark_home()),
        PYSPARK_PYTHON=sys.executable,
        SPARK_LOG_DIR=str(logs),
        SPARK_WORKER_DIR=str(logs / "work"),
    )
    return env


def _wait_for(url: str, text: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as page:
                if text in page.read().decode("utf-8", "replace"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not show {text!r} within {timeout:.0f} s")


@contextmanager
def standalone_cluster(root: Path, workers: int = 2) -> Iterator[str]:
    """Yield the master URL of a master and ``workers`` one-core workers, all on 127.0.0.1."""
    root.mkdir(parents=True, exist_ok=True)
    env = _environment(root)
    launcher = str(spark_home() / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    processes = []
    log = open(root / "cluster.log", "ab")  # noqa: SIM115 - closed below
    try:
        processes.append(
            subprocess.Popen(
                [
                    launcher,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--webui-port",
                    str(ui),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        _wait_for(f"http://127.0.0.1:{ui}/json/", '"status" : "ALIVE"')
        for _ in range(workers):
            processes.append(
                subprocess.Popen(
                    [
                        launcher,
                        "org.apache.spark.deploy.worker.Worker",
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        "1",
                        "--memory",
                        "1g",
                        "--webui-port",
                        str(free_port()),
                        master_url,
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_for(f"http://127.0.0.1:{ui}/json/", f'"aliveworkers" : {workers}')
        yield master_url
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
