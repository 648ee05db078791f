"""Scoring speed and memory: `segscope score` against the plain script a user would write by hand.

    python benchmarks/score_speed.py [--rows 1000000] [--repeats 3] [--memory-rows 10000000]

Both run in this process on the same 1M-row x 20-column Parquet file after fitting on a 100k-row history
(fitting is not timed): segscope's full pipeline (feature preparation, IForest + ECOD ensemble, calibration,
reasons, alert policy, Parquet output) via `segscope.score_file`, and pandas.read_parquet + PyOD
IForest.decision_function + DataFrame.to_parquet. Reports medians. Then the peak RSS of the `segscope score`
command on a 10M-row file (a child process, measured with getrusage). Writes benchmarks/results/score_speed.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = 20


def write_table(path: Path, rows: int, seed: int, chunk: int = 1_000_000) -> None:
    """Mixed-scale numeric columns with 0.5% planted anomalies, written in chunks (bounded memory)."""
    scales = np.exp(np.random.default_rng(12345).normal(0, 2, COLUMNS))  # same columns in every file
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        x = rng.normal(size=(n, COLUMNS)) * scales
        x[:, ::3] = np.abs(x[:, ::3]) ** 1.5  # some skewed columns
        anomalies = rng.random(n) < 0.005
        x[anomalies] += rng.normal(0, 6, size=(int(anomalies.sum()), COLUMNS)) * scales
        table = pa.table({f"f{j:02d}": x[:, j] for j in range(COLUMNS)})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    assert writer is not None
    writer.close()


def time_segscope(bundle: Path, data: Path, out: Path) -> float:
    from segscope.model import Model
    from segscope.pipeline import score_file

    model = Model.load(bundle)
    start = time.perf_counter()
    score_file(model, data, out)
    return time.perf_counter() - start


def time_plain(history: Path, data: Path, out: Path) -> float:
    import pandas as pd
    from pyod.models.iforest import IForest

    detector = IForest(random_state=0).fit(pd.read_parquet(history).to_numpy())
    start = time.perf_counter()
    frame = pd.read_parquet(data)
    frame["score"] = detector.decision_function(frame.to_numpy())
    frame.to_parquet(out)
    return time.perf_counter() - start


def peak_rss_of_cli(bundle: Path, data: Path, out: Path) -> tuple[float, float]:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "segscope.cli", "score", str(data), "--bundle", str(bundle), "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, seconds  # KiB -> MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-rows", type=int, default=10_000_000, help="0 to skip the memory run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "score_speed.json"))
    args = parser.parse_args()

    from segscope.pipeline import fit_file

    with tempfile.TemporaryDirectory(prefix="segscope-bench-") as tmp_name:
        tmp = Path(tmp_name)
        history, data = tmp / "history.parquet", tmp / "new.parquet"
        write_table(history, 100_000, seed=0)
        write_table(data, args.rows, seed=1)
        bundle = tmp / "bundle"
        fit_file(history).save(bundle)
        time_segscope(bundle, history, tmp / "warm.parquet")  # JIT caches warm, as in any later run

        seg, plain = [], []
        for _ in range(args.repeats):
            seg.append(time_segscope(bundle, data, tmp / "seg.parquet"))
            plain.append(time_plain(history, data, tmp / "plain.parquet"))
            print(f"segscope {seg[-1]:.2f}s, plain {plain[-1]:.2f}s", flush=True)
        seg_s, plain_s = statistics.median(seg), statistics.median(plain)
        result = {
            "rows": args.rows,
            "columns": COLUMNS,
            "repeats": args.repeats,
            "segscope_seconds_median": seg_s,
            "plain_seconds_median": plain_s,
            "segscope_rows_per_s": args.rows / seg_s,
            "plain_rows_per_s": args.rows / plain_s,
            "speed_ratio_segscope_over_plain": plain_s / seg_s,
        }
        print(
            f"segscope {args.rows / seg_s:,.0f} rows/s, plain {args.rows / plain_s:,.0f} rows/s, "
            f"ratio {plain_s / seg_s:.2f}x",
            flush=True,
        )
        if args.memory_rows:
            big = tmp / "big.parquet"
            write_table(big, args.memory_rows, seed=2)
            peak_mib, seconds = peak_rss_of_cli(bundle, big, tmp / "big-scored.parquet")
            result.update(
                {"memory_rows": args.memory_rows, "memory_peak_rss_mib": peak_mib, "memory_run_seconds": seconds}
            )
            print(f"segscope score on {args.memory_rows:,} rows: peak RSS {peak_mib:,.0f} MiB in {seconds:.1f}s")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
