"""Scoring on Spark against `segscope score` in one process, on the same rows.

    python benchmarks/spark_score.py [--rows 10000000] [--files 8] [--no-cluster]

The 20-column numeric table of score_speed.py (fitted on 100k rows, not timed), written as one Parquet file for
`segscope score` and as a folder of ``--files`` Parquet files for Spark. Each run is the CLI in its own process,
as a user runs it: `segscope score` (Polars, this machine's two cores), `segscope score --engine spark --master
local[2]`, and the same against a standalone cluster (a master and two one-core workers on loopback, started
from pyspark's own launcher). Wall time includes Spark's start-up. Peak memory is sampled every 0.2 s over the
CLI's process tree and the executors (on the cluster: the workers' executor JVMs and their Python workers): the
largest JVM, and the largest Python worker. Writes
benchmarks/results/spark_score.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' cluster launcher

from score_speed import write_table

from tests.spark_helpers import standalone_cluster


def run_cli(args: list[str]) -> dict:
    """Run `segscope ARGS` and sample the memory of its process tree: seconds, peak RSS (MiB) of the CLI, of the
    JVM, and of the largest Python worker."""
    cmd = [sys.executable, "-m", "segscope.cli", *args]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[str, float] = {"cli": 0.0, "jvm": 0.0, "python_worker": 0.0}
    stop = threading.Event()

    def sample() -> None:
        root = psutil.Process(child.pid)
        while not stop.wait(0.2):
            try:
                tree = {root, *root.children(recursive=True)}
            except psutil.NoSuchProcess:
                return
            for proc in psutil.process_iter():  # a cluster's executors are the workers' children, not the CLI's
                try:
                    if "CoarseGrainedExecutorBackend" in " ".join(proc.cmdline()):
                        tree |= {proc, *proc.children(recursive=True)}
                except psutil.Error:
                    continue
            for proc in tree:
                try:
                    rss = proc.memory_info().rss / 2**20
                    java = "java" in proc.name()
                except psutil.Error:
                    continue
                kind = "cli" if proc.pid == child.pid else "jvm" if java else "python_worker"
                peaks[kind] = max(peaks[kind], rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = child.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"segscope {' '.join(args)} failed:\n{err[-2000:]}")
    return {"seconds": seconds, **{f"peak_rss_mib_{k}": v for k, v in peaks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--no-cluster", dest="cluster", action="store_false")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "spark_score.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from segscope.pipeline import fit_file

    result: dict = {"rows": args.rows, "files": args.files}
    with tempfile.TemporaryDirectory(prefix="segscope-spark-bench-") as tmp_name:
        tmp = Path(tmp_name)
        write_table(tmp / "history.parquet", 100_000, seed=0)
        fit_file(tmp / "history.parquet").save(tmp / "bundle")
        single, folder = tmp / "new.parquet", tmp / "new"
        write_table(single, args.rows, seed=1)
        folder.mkdir()
        per_file = -(-args.rows // args.files)
        for i in range(args.files):
            write_table(folder / f"part-{i:03d}.parquet", min(per_file, args.rows - i * per_file), seed=100 + i)
        bundle = str(tmp / "bundle")
        runs = {
            "segscope score (one process)": ["score", str(single), "--bundle", bundle, "--out", str(tmp / "a.parquet")],
            "spark local[2]": [
                "score",
                str(folder),
                "--bundle",
                bundle,
                "--out",
                str(tmp / "b"),
                "--engine",
                "spark",
                "--master",
                "local[2]",
            ],
        }
        for name, cli in runs.items():
            result[name] = run_cli(cli)
            print(name, {k: round(v, 1) for k, v in result[name].items()}, flush=True)
        if args.cluster:
            with standalone_cluster(tmp / "cluster") as master:
                cli = [
                    "score",
                    str(folder),
                    "--bundle",
                    bundle,
                    "--out",
                    str(tmp / "c"),
                    "--engine",
                    "spark",
                    "--master",
                    master,
                ]
                result["spark standalone (2 workers x 1 core)"] = run_cli(cli)
            print("cluster", {k: round(v, 1) for k, v in result["spark standalone (2 workers x 1 core)"].items()})
    base = result["segscope score (one process)"]["seconds"]
    print("| run | seconds | rows/s | vs one process | peak RSS: CLI / JVM / largest Python worker (MiB) |")
    print("|---|---:|---:|---:|---|")
    for name, r in result.items():
        if isinstance(r, dict):
            r["rows_per_s"] = args.rows / r["seconds"]
            r["ratio_vs_one_process"] = base / r["seconds"]
            peaks = " / ".join(f"{r[f'peak_rss_mib_{k}']:,.0f}" for k in ("cli", "jvm", "python_worker"))
            print(
                f"| {name} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r['ratio_vs_one_process']:.2f}x | {peaks} |"
            )
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
