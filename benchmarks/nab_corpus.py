"""The maintenance pack on the whole Numenta Anomaly Benchmark (all 58 series), scored by NAB's rules.

    git clone https://github.com/numenta/NAB          # once; or any copy with data/, labels/, results/
    python benchmarks/nab_corpus.py --nab PATH/TO/NAB [--config maintenance] [--only realKnownCause,...]
    python benchmarks/nab_corpus.py --nab PATH/TO/NAB --reproduce     # the scorer against final_results.json
    python benchmarks/nab_corpus.py --nab PATH/TO/NAB --adapt 1d/7d   # the config with adapt: {every, window}

Protocol, as NAB runs a detector: each series is seen once in time order; the pack is fitted on the series'
probationary rows (the first 15%, at most 750) and scores the rest in order as a stream would (one entity per
series); its ``is_alert`` column is the detection. NAB's corpus score: the raw scores summed over the files,
normalised with the summed null and perfect scores, ``100 * (S - S_null) / (S_perfect - S_null)``, for the
standard, reward-low-FP and reward-low-FN profiles, and the same per category. ``--reproduce`` scores NAB's
published per-file results of numenta and ARTime with their published thresholds: it must print 70.10 and
74.85 (standard), which is what says this scorer is NAB's.

Defaults of the pack are chosen on realKnownCause and realAWSCloudwatch only; the other categories are unseen.
Each series is scored with a drift tracker: its results say whether the drift guard warned (``drift_warning``),
with the alert rate and the rate the policy expects. Writes benchmarks/results/nab_corpus[-<config>].json and .md
(or ``--out STEM``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from segscope.config import SegscopeConfig, config_from_dict, load_config
from segscope.exceptions import DataError
from segscope.metrics import NAB_PROFILES, nab_score
from segscope.model import Model
from segscope.unsupervised.drift import adaptation_of

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CATEGORIES = (
    "artificialNoAnomaly", "artificialWithAnomaly", "realAWSCloudwatch", "realAdExchange", "realKnownCause",
    "realTraffic", "realTweets",
)  # fmt: skip
TUNED_ON = ("realKnownCause", "realAWSCloudwatch")


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def corpus_windows(nab: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    raw = json.loads((nab / "labels" / "combined_windows.json").read_text())
    return {name: [(_stamp(a), _stamp(b)) for a, b in spans] for name, spans in raw.items()}


def corpus_score(per_file: dict[str, dict[str, float]], windows: dict[str, list[Any]], profile: str) -> float:
    """NAB's normalisation over a set of files: raw summed, null = -fn per window, perfect = tp per window."""
    tp_w, _, fn_w = NAB_PROFILES[profile]
    raw = sum(per_file[name][profile] for name in per_file)
    count = sum(len(windows[name]) for name in per_file)
    null, perfect = -fn_w * count, tp_w * count
    return 100.0 * (raw - null) / (perfect - null)


def score_file(stamps: list[datetime], detections: np.ndarray, windows: list[Any]) -> dict[str, float]:
    return {p: nab_score(stamps, detections, windows, p)["raw"] for p in NAB_PROFILES}


def table(per_file: dict[str, dict[str, float]], windows: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
    """Corpus and per-category normalised scores for each profile."""
    out = {"corpus": {p: corpus_score(per_file, windows, p) for p in NAB_PROFILES}}
    for category in CATEGORIES:
        files = {k: v for k, v in per_file.items() if k.startswith(category + "/")}
        if any(windows[k] for k in files):
            out[category] = {p: corpus_score(files, windows, p) for p in NAB_PROFILES}
    return out


def reproduce(nab: Path) -> dict[str, dict[str, float]]:
    windows = corpus_windows(nab)
    thresholds = json.loads((nab / "config" / "thresholds.json").read_text())
    published = json.loads((nab / "results" / "final_results.json").read_text())
    out = {}
    for detector in ("numenta", "ARTime"):
        per_profile = {}
        for profile in NAB_PROFILES:
            per_file = {}
            for name, spans in windows.items():
                category, file = name.split("/")
                frame = pl.read_csv(nab / "results" / detector / category / f"{detector}_{file}")
                stamps = [_stamp(s) for s in frame["timestamp"]]
                hits = frame["anomaly_score"].to_numpy() >= thresholds[detector][profile]["threshold"]
                per_file[name] = {profile: nab_score(stamps, hits, spans, profile)["raw"]}
            per_profile[profile] = corpus_score(per_file, windows, profile)
            print(
                f"{detector:8s} {profile:20s} {per_profile[profile]:6.2f}",
                f"published {published[detector][profile]:6.2f}",
            )
        out[detector] = per_profile
    return out


def run_series(frame: pl.DataFrame, cfg: SegscopeConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit on the probationary rows, score the rest in order; the detections over every row."""
    n = frame.height
    probation = int(min(np.floor(0.15 * n), 750))
    model = Model(cfg).fit(frame[:probation])
    drift = model.drift_tracker()
    scored = model.score(frame[probation:], state=model.new_state(), drift=drift)
    alerts = np.concatenate([np.zeros(probation, dtype=bool), scored["is_alert"].to_numpy()])
    report = drift.report(adaptation_of(cfg.policy, cfg.adapt)) if drift is not None else None
    guard = {
        "drift_warning": report.warning() if report is not None else None,
        "alert_rate": report.alert_rate if report is not None else None,
        "expected_alert_rate": report.expected_alert_rate if report is not None else None,
        "shifted_columns": len(report.shifted) if report is not None else None,
    }
    return alerts, {"rows": n, "alerts": int(alerts.sum()), **guard}


def load_series(nab: Path, name: str) -> pl.DataFrame:
    frame = pl.read_csv(nab / "data" / name, try_parse_dates=True)
    return frame.with_columns(
        pl.lit("m").alias("machine_id"), pl.lit(0).alias("label"), pl.col("timestamp").cast(pl.Datetime("us"))
    )


def evaluate(nab: Path, cfg: SegscopeConfig, only: tuple[str, ...] | None) -> dict[str, Any]:
    windows = corpus_windows(nab)
    per_file, detail = {}, {}
    for name in sorted(windows):
        if only and name.split("/")[0] not in only:
            continue
        frame = load_series(nab, name)
        started = time.perf_counter()
        try:
            alerts, info = run_series(frame, cfg)
        except DataError as exc:  # a series the pack cannot fit (flat): no detections, said in the results
            alerts, info = np.zeros(frame.height, dtype=bool), {"rows": frame.height, "alerts": 0, "refused": str(exc)}
        stamps = frame["timestamp"].to_list()
        per_file[name] = score_file(stamps, alerts, windows[name])
        detail[name] = {**info, **per_file[name], "seconds": time.perf_counter() - started}
        print(f"{name:70s} alerts {info['alerts']:5d}  std raw {per_file[name]['standard']:7.2f}", flush=True)
    return {"scores": table(per_file, windows), "files": detail}


def markdown(scores: dict[str, dict[str, float]]) -> str:
    cols = [c for c in ("corpus", *CATEGORIES) if c in scores]
    lines = ["| NAB profile | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for profile in NAB_PROFILES:
        lines.append(f"| {profile} | " + " | ".join(f"{scores[c][profile]:.1f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nab", required=True, help="a copy of github.com/numenta/NAB (data/, labels/, results/)")
    parser.add_argument("--config", default="maintenance", help="a config in configs/ or a path")
    parser.add_argument("--only", default=None, help="comma-separated categories")
    parser.add_argument("--reproduce", action="store_true")
    parser.add_argument(
        "--off", action="append", default=[], choices=["cooldown", "recalibrate"],
        help="switch a policy setting of the config off (repeatable), to measure it and the drift guard without it",
    )  # fmt: skip
    parser.add_argument("--adapt", default=None, help="EVERY/WINDOW: the config with adapt: {every, window} on")
    parser.add_argument("--out", default=None, help="results stem (default benchmarks/results/nab_corpus[-config])")
    args = parser.parse_args()
    nab = Path(args.nab)
    if args.reproduce:
        reproduce(nab)
        return
    warnings.simplefilter("ignore")
    path = Path(args.config) if Path(args.config).is_file() else CONFIGS / f"{args.config}.yaml"
    only = tuple(args.only.split(",")) if args.only else None
    started = time.perf_counter()
    cfg = load_config(path)
    if args.off:
        cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update=dict.fromkeys(args.off))})
    if args.adapt:
        every, window = args.adapt.split("/")
        cfg = config_from_dict({**cfg.model_dump(mode="json"), "adapt": {"every": every, "window": window}})
    results = evaluate(nab, cfg, only)
    results["seconds"] = time.perf_counter() - started
    print(markdown(results["scores"]))
    stem = f"nab_corpus-{path.stem}" if path.stem != "maintenance" else "nab_corpus"
    stem += "".join(f"-no-{name}" for name in args.off)
    stem += f"-adapt-{args.adapt.replace('/', '-')}" if args.adapt else ""
    target = Path(args.out) if args.out else Path(__file__).parent / "results" / stem
    target.with_suffix(".json").write_text(json.dumps(results, indent=1))
    target.with_suffix(".md").write_text(markdown(results["scores"]))


if __name__ == "__main__":
    main()
