"""Scoring rows/s by input format: the same rows as Parquet, CSV and NDJSON.

    python benchmarks/format_speed.py [--data ../shared/data] [--rows 200000] [--repeats 3]

Two tables of the same shape: the vehicle-insurance claims (31 columns, 25 of them text; the model fitted on the
1994-95 claims without ``Year`` and the label) on the 4,083 claims of 1996 and on the claims repeated to
``--rows`` rows; and ``--rows`` rows of the 20-column numeric table of score_speed.py. Each file is scored by
`segscope.score_file` to Parquet, alternating formats, median of ``--repeats``; the ratio is Parquet's rows/s over
the format's (the goal: CSV and NDJSON within 2x). Writes benchmarks/results/format_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import polars as pl
from score_speed import write_table

from _adbench import data_dir

FORMATS = ("parquet", "csv", "ndjson")


def write_formats(frame: pl.DataFrame, stem: Path) -> dict[str, Path]:
    paths = {fmt: stem.with_suffix(f".{fmt}") for fmt in FORMATS}
    frame.write_parquet(paths["parquet"])
    frame.write_csv(paths["csv"])
    frame.write_ndjson(paths["ndjson"])
    return paths


def rows_per_second(bundle: Path, paths: dict[str, Path], out: Path, repeats: int) -> dict[str, float]:
    from segscope.model import Model
    from segscope.pipeline import score_file

    model = Model.load(bundle)
    score_file(model, paths["parquet"], out)  # JIT caches warm
    seconds: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    for _ in range(repeats):
        for fmt, path in paths.items():
            start = time.perf_counter()
            summary = score_file(model, path, out)
            seconds[fmt].append(time.perf_counter() - start)
    return {fmt: summary.rows / statistics.median(times) for fmt, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "format_speed.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # drift lines: the 1996 claims are scored against 1994-95

    from segscope.config import SegscopeConfig
    from segscope.model import Model
    from segscope.pipeline import fit_file

    claims = pl.read_parquet(data_dir(args.data) / "fraud_vehicle_insurance.parquet")
    history, new = claims.filter(pl.col("Year") < 1996), claims.filter(pl.col("Year") == 1996)
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="segscope-formats-") as tmp_name:
        tmp = Path(tmp_name)
        config = SegscopeConfig().with_features(id_column="PolicyNumber", drop=("label", "Year"))
        Model(config).fit(history).save(tmp / "claims-bundle")
        repeated = pl.concat([new] * (-(-args.rows // new.height))).head(args.rows).drop("PolicyNumber")
        noid = SegscopeConfig().with_features(id_column=None, drop=("label", "Year", "PolicyNumber"))
        Model(noid).fit(history).save(tmp / "claims-noid")
        write_table(tmp / "numeric-history.parquet", 100_000, seed=0)
        write_table(tmp / "numeric.parquet", args.rows, seed=1)
        fit_file(tmp / "numeric-history.parquet").save(tmp / "numeric-bundle")
        cases = {
            f"claims 1996 ({new.height:,} rows)": ("claims-bundle", new),
            f"claims repeated ({args.rows:,} rows)": ("claims-noid", repeated),
            f"numeric ({args.rows:,} x 20)": ("numeric-bundle", pl.read_parquet(tmp / "numeric.parquet")),
        }
        for name, (bundle, frame) in cases.items():
            paths = write_formats(frame, tmp / bundle.replace("bundle", "input"))
            speeds = rows_per_second(tmp / bundle, paths, tmp / "scored.parquet", args.repeats)
            result[name] = {
                **{f"{fmt}_rows_per_s": v for fmt, v in speeds.items()},
                **{f"parquet_over_{fmt}": speeds["parquet"] / speeds[fmt] for fmt in FORMATS[1:]},
            }
            print(name, {k: round(v, 2) for k, v in result[name].items()}, flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("| input | Parquet rows/s | CSV rows/s | NDJSON rows/s | Parquet / CSV | Parquet / NDJSON |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in result.items():
        print(
            f"| {name} | {r['parquet_rows_per_s']:,.0f} | {r['csv_rows_per_s']:,.0f} | {r['ndjson_rows_per_s']:,.0f}"
            f" | {r['parquet_over_csv']:.2f}x | {r['parquet_over_ndjson']:.2f}x |"
        )


if __name__ == "__main__":
    main()
