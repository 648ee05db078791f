"""Scoring speed and memory: `segscope score` against the plain script a user would write by hand.

    python benchmarks/score_speed.py [--rows 1000000] [--repeats 3] [--memory-rows 10000000] [--data ../shared/data]

Two cases, each on a 1M-row Parquet file after fitting (fitting is not timed):

* numeric: 20 mixed-scale columns, fitted on a 100k-row history;
* categorical: the vehicle-insurance claims (31 columns, 25 of them text) repeated to 1M rows, fitted on the
  15,420 original rows.

segscope's full pipeline (read, feature preparation, IForest + ECOD ensemble, calibration, reasons, alert policy,
drift, Parquet output) via `segscope.score_file`, against pandas.read_parquet + get_dummies aligned to the fit's
columns + PyOD IForest.decision_function + DataFrame.to_parquet, alternating, in this process; medians. Then
where segscope's time goes (one serial run, exclusive seconds per stage: see _stages.py), and the peak RSS of the
`segscope score` command on a 10M-row numeric file (a child process, getrusage). Both also as processes, the
way a user runs them (`compare_commands`: the command against the plain script as a file; --no-commands to skip).
Writes benchmarks/results/score_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _stages import stage_seconds

from _adbench import data_dir

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


def claims_table(data_dir: Path, path: Path, rows: int) -> None:
    """The vehicle-insurance claims (label and Year dropped) repeated to ``rows`` rows: 31 columns, most text."""
    import polars as pl

    claims = pl.read_parquet(data_dir / "fraud_vehicle_insurance.parquet").drop("label", "Year", "PolicyNumber")
    repeats = -(-rows // claims.height)
    pl.concat([claims] * repeats).head(rows).write_parquet(path, compression="zstd")


def time_segscope(bundle: Path, data: Path, out: Path) -> float:
    from segscope.model import Model
    from segscope.pipeline import score_file

    model = Model.load(bundle)
    start = time.perf_counter()
    score_file(model, data, out)
    return time.perf_counter() - start


def time_plain(history: Path, data: Path, out: Path) -> float:
    """pandas + PyOD IForest; text columns one-hot encoded with ``get_dummies`` and aligned to the fit's columns."""
    import pandas as pd
    from pyod.models.iforest import IForest

    def encode(frame: pd.DataFrame) -> pd.DataFrame:
        text = [c for c in frame.columns if frame[c].dtype == object or str(frame[c].dtype) in ("string", "str")]
        return pd.get_dummies(frame, columns=text, dtype=float) if text else frame

    fitted = encode(pd.read_parquet(history))
    detector = IForest(random_state=0).fit(fitted.to_numpy(dtype=float))
    start = time.perf_counter()
    frame = pd.read_parquet(data)
    matrix = encode(frame).reindex(columns=fitted.columns, fill_value=0).to_numpy(dtype=float)
    frame["score"] = detector.decision_function(matrix)
    frame.to_parquet(out)
    return time.perf_counter() - start


def compare(bundle: Path, history: Path, data: Path, tmp: Path, repeats: int, rows: int) -> dict:
    """Median seconds of segscope and the plain script on ``data`` (alternating runs), the ratio, and the serial
    stage breakdown of one segscope run."""
    time_segscope(bundle, history, tmp / "warm.parquet")  # JIT caches warm, as in any later run
    seg, plain = [], []
    for _ in range(repeats):
        seg.append(time_segscope(bundle, data, tmp / "seg.parquet"))
        plain.append(time_plain(history, data, tmp / "plain.parquet"))
        print(f"  segscope {seg[-1]:.2f}s, plain {plain[-1]:.2f}s", flush=True)
    seg_s, plain_s = statistics.median(seg), statistics.median(plain)
    stages = stage_seconds(bundle, data, tmp / "stages.parquet")
    print(f"  segscope {rows / seg_s:,.0f} rows/s, plain {rows / plain_s:,.0f} rows/s, ratio {plain_s / seg_s:.2f}x")
    print("  stages (serial run, s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()), flush=True)
    return {
        "segscope_seconds_median": seg_s,
        "plain_seconds_median": plain_s,
        "segscope_rows_per_s": rows / seg_s,
        "plain_rows_per_s": rows / plain_s,
        "speed_ratio_segscope_over_plain": plain_s / seg_s,
        "stages_serial_seconds": stages,
    }


PLAIN_SCRIPT = """\
import sys

import joblib
import pandas as pd

columns, detector = joblib.load(sys.argv[1])
frame = pd.read_parquet(sys.argv[2])
text = [c for c in frame.columns if frame[c].dtype == object or str(frame[c].dtype) in ("string", "str")]
encoded = pd.get_dummies(frame, columns=text, dtype=float) if text else frame
frame["score"] = detector.decision_function(encoded.reindex(columns=columns, fill_value=0).to_numpy(dtype=float))
frame.to_parquet(sys.argv[3])
"""


def segscope_command() -> list[str]:
    """The ``segscope`` command of this environment (its console script, as a user runs it)."""
    script = Path(sys.executable).with_name("segscope")
    return [str(script)] if script.exists() else [sys.executable, "-m", "segscope.cli"]


def compare_commands(bundle: Path, history: Path, data: Path, tmp: Path, repeats: int) -> dict:
    """Seconds of the two as processes, as a user runs them (wall clock from launch to exit, alternating, after
    one warm-up run of each): ``segscope score`` against the plain script as a file, its IForest fitted beforehand
    and loaded with joblib (its fit is not timed; its imports are, as are segscope's). Both run with Python's
    bytecode cache, as on a user's machine (pip writes it at install; PYTHONDONTWRITEBYTECODE, which some sandboxes
    set, would have segscope's own modules compiled from source at every launch, about 0.1 s, while the
    libraries the plain script imports were compiled at their install)."""
    import joblib
    import pandas as pd
    from pyod.models.iforest import IForest

    frame = pd.read_parquet(history)
    text = [c for c in frame.columns if frame[c].dtype == object or str(frame[c].dtype) in ("string", "str")]
    encoded = pd.get_dummies(frame, columns=text, dtype=float) if text else frame
    joblib.dump(
        (list(encoded.columns), IForest(random_state=0).fit(encoded.to_numpy(dtype=float))), tmp / "plain.joblib"
    )
    (tmp / "plain.py").write_text(PLAIN_SCRIPT)
    seg_out, plain_out = str(tmp / "seg.parquet"), str(tmp / "plain.parquet")
    runs = {
        "segscope": [*segscope_command(), "score", str(data), "--bundle", str(bundle), "--out", seg_out],
        "plain": [sys.executable, str(tmp / "plain.py"), str(tmp / "plain.joblib"), str(data), plain_out],
    }

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def once(cmd: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        return time.perf_counter() - start

    for cmd in runs.values():
        once(cmd)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, cmd in runs.items():
            seconds[name].append(once(cmd))
        print(
            f"  as commands: segscope score {seconds['segscope'][-1]:.2f}s, plain {seconds['plain'][-1]:.2f}s",
            flush=True,
        )
    seg_s, plain_s = statistics.median(seconds["segscope"]), statistics.median(seconds["plain"])
    print(f"  as commands: ratio {plain_s / seg_s:.2f}x (medians)", flush=True)
    return {
        "segscope_seconds": seconds["segscope"],
        "plain_seconds": seconds["plain"],
        "ratio_of_medians": plain_s / seg_s,
    }


def peak_rss_of_cli(bundle: Path, data: Path, out: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of one `segscope score` child, from that child's own rusage (wait4), not the
    largest of every child this process ever had."""

    start = time.perf_counter()
    cmd = [sys.executable, "-m", "segscope.cli", "score", str(data), "--bundle", str(bundle), "--out", str(out)]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"segscope score failed with exit code {child.returncode}")
    return usage.ru_maxrss / 1024.0, time.perf_counter() - start  # KiB -> MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-rows", type=int, default=10_000_000, help="0 to skip the memory run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "score_speed.json"))
    parser.add_argument("--data", default=None, help="folder with fraud_vehicle_insurance.parquet")
    parser.add_argument(
        "--no-commands", dest="commands", action="store_false", help="skip the runs of both as processes"
    )
    parser.add_argument("--no-claims", dest="claims", action="store_false", help="skip the categorical case")
    args = parser.parse_args()

    from segscope.config import SegscopeConfig
    from segscope.pipeline import fit_file

    result: dict = {"rows": args.rows, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="segscope-bench-") as tmp_name:
        tmp = Path(tmp_name)
        history, data = tmp / "history.parquet", tmp / "new.parquet"
        write_table(history, 100_000, seed=0)
        write_table(data, args.rows, seed=1)
        bundle = tmp / "bundle"
        fit_file(history).save(bundle)
        print(f"numeric: {args.rows:,} x {COLUMNS} columns", flush=True)
        result["numeric"] = {"columns": COLUMNS, **compare(bundle, history, data, tmp, args.repeats, args.rows)}
        if args.commands:
            result["numeric"]["commands"] = compare_commands(bundle, history, data, tmp, args.repeats)
        if args.claims:
            claims_history, claims = tmp / "claims-history.parquet", tmp / "claims.parquet"
            source = data_dir(args.data)
            claims_table(source, claims_history, 15_420)
            claims_table(source, claims, args.rows)
            claims_bundle = tmp / "claims-bundle"
            fit_file(claims_history, SegscopeConfig()).save(claims_bundle)
            print(f"categorical: the claims set repeated to {args.rows:,} rows", flush=True)
            result["categorical"] = compare(claims_bundle, claims_history, claims, tmp, args.repeats, args.rows)
            if args.commands:
                result["categorical"]["commands"] = compare_commands(
                    claims_bundle, claims_history, claims, tmp, args.repeats
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
