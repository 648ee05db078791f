"""`segscope fit` with segments on 1M rows x 20 columns, in fresh processes (what a user waits for; target < 2 min).

    python benchmarks/segments_fit_time.py [--runs 3]

Writes the same 1M-row x 20-column Parquet file as score_speed.py, then runs `segscope fit FILE --config
seg.toml` (`[segments] enabled = true`, every other setting default: a 100,000-row fit sample, 20,000 of them
segmented) --runs times, each in a new process so UMAP's one-time compilation is included, alternating with the
same fit with `boundaries = "embedding"` (the previous default, whose held-out agreement needs
`UMAP.transform`) as the baseline, and reports the medians and their ratio. Writes
benchmarks/results/segments_fit_time.json.
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
    configs = {
        "default": "[segments]\nenabled = true\n",
        "embedding": '[segments]\nenabled = true\nboundaries = "embedding"\n',
    }
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "big.parquet"
        write_table(data, args.rows, seed=0)
        for run in range(args.runs):
            for name, text in configs.items():
                config = Path(tmp) / f"{name}.toml"
                config.write_text(text)
                start = time.perf_counter()
                subprocess.run(
                    [segscope, "fit", data, "--config", config, "--bundle", Path(tmp) / f"bundle-{name}-{run}"],
                    check=True,
                    capture_output=True,
                )
                seconds[name].append(time.perf_counter() - start)
                print(f"run {run + 1} {name}: {seconds[name][-1]:.1f} s", flush=True)
    median = {name: float(np.median(values)) for name, values in seconds.items()}
    result = {
        "rows": args.rows,
        "columns": 20,
        "seconds": seconds["default"],
        "median_seconds": median["default"],
        "embedding_boundaries_seconds": seconds["embedding"],
        "embedding_boundaries_median_seconds": median["embedding"],
        "ratio_default_to_embedding": median["default"] / median["embedding"],
    }
    print(
        f"median of {args.runs}: {median['default']:.1f} s (boundaries in the embedding: {median['embedding']:.1f} s, "
        f"ratio {result['ratio_default_to_embedding']:.2f})"
    )
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
