"""What `segscope score` reads before the run for its progress bar's total: a count over the whole file against the
estimate from its size and a few stretches of lines, on 1M x 20 numeric rows as CSV and as NDJSON.

    python benchmarks/progress_total.py [--rows 1000000] [--repeats 5]

Medians of ``repeats`` calls each, in this process (the file is in the page cache after the first read).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from segscope.sources.files import count_rows, estimate_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frame = pl.DataFrame({f"x{i}": rng.normal(size=args.rows) for i in range(20)})
    with tempfile.TemporaryDirectory() as folder:
        for suffix in ("csv", "ndjson"):
            path = Path(folder) / f"data.{suffix}"
            frame.write_csv(path) if suffix == "csv" else frame.write_ndjson(path)
            for name, total in (("count_rows", count_rows), ("estimate_rows", estimate_rows)):
                seconds = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    rows = total(path)
                    seconds.append(time.perf_counter() - started)
                print(f"{suffix:7} {name:14} {rows:>10,} rows  median {statistics.median(seconds):.4f} s")
            path.unlink()


if __name__ == "__main__":
    main()
