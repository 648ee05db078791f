"""`segscope fit` with segments on 1M rows x 20 columns, in fresh processes (what a user waits for; target < 2 min).

    python benchmarks/segments_fit_time.py [--runs 3]

Writes the same 1M-row x 20-column Parquet file as score_speed.py, then runs `segscope fit FILE --config
seg.toml` (`[segments] enabled = true`, every other setting default: a 100,000-row fit sample, 20,000 of them
segmented) --runs times, each in a new process so UMAP's one-time compilation is included, and reports the
median wall time. Writes benchmarks/results/segments_fit_time.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from score_speed import write_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "segments_fit_time.json"))
    args = parser.parse_args()
    segscope = Path(sys.executable).parent / "segscope"
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        data, config = Path(tmp) / "big.parquet", Path(tmp) / "seg.toml"
        write_table(data, args.rows, seed=0)
        config.write_text("[segments]\nenabled = true\n")
        for run in range(args.runs):
            start = time.perf_counter()
            subprocess.run(
                [segscope, "fit", data, "--config", config, "--bundle", Path(tmp) / f"bundle{run}"],
                check=True,
                capture_output=True,
            )
            seconds.append(time.perf_counter() - start)
            print(f"run {run + 1}: {seconds[-1]:.1f} s", flush=True)
    result = {"rows": args.rows, "columns": 20, "seconds": seconds, "median_seconds": float(np.median(seconds))}
    print(f"median of {args.runs}: {result['median_seconds']:.1f} s")
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
