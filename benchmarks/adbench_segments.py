"""Does segment-aware scoring help? AUCPR of the global ensemble vs segment-aware calibration, per ADBench set.

    python benchmarks/adbench_segments.py [--data ../shared/data] [--quick]

Same protocol as adbench_unsupervised.py (10k subsample, 70/30 stratified split, seeds 1-3, no labels). The
model is fitted once per split with segments enabled; the global score and the segment-aware score are both
computed from it; --boundaries embedding draws the segments' boundaries as versions before did. Writes
benchmarks/results/adbench_segments.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from segscope.config import SegmentsConfig, SegscopeConfig
from segscope.model import Model

from _adbench import ADBENCH_SETS, SEEDS, data_dir, load_set, split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--boundaries", default="linear", choices=("linear", "embedding"), help="where segments' boundaries are drawn"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "adbench_segments.json"))
    args = parser.parse_args()
    data = data_dir(args.data)
    seeds = (1,) if args.quick else SEEDS
    table: dict = {}
    print("| set | segments | global AUCPR | segment-aware AUCPR | global AUCROC | segment-aware AUCROC |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ADBENCH_SETS:
        rows: dict[str, list[float]] = {k: [] for k in ("segments", "g_pr", "s_pr", "g_roc", "s_roc")}
        for seed in seeds:
            train, test = split(load_set(data, name), seed)
            cfg = SegscopeConfig(
                seed=seed, segments=SegmentsConfig(enabled=True, aware_scoring=True, boundaries=args.boundaries)
            )
            model = Model(cfg.with_features(id_column=None, drop=("label",))).fit(train)
            x = model.preparer_.transform(model.preparer_.validate(test))
            y = test["label"].to_numpy()
            global_score = model.ensemble_.score(x)
            aware = model.score(test)["anomaly_score"].to_numpy()
            rows["segments"].append(float(model.segmenter_.segments_.size))
            rows["g_pr"].append(100 * average_precision_score(y, global_score))
            rows["s_pr"].append(100 * average_precision_score(y, aware))
            rows["g_roc"].append(100 * roc_auc_score(y, global_score))
            rows["s_roc"].append(100 * roc_auc_score(y, aware))
        table[name] = {k: float(np.mean(v)) for k, v in rows.items()}
        r = table[name]
        print(
            f"| {name} | {r['segments']:.0f} | {r['g_pr']:.2f} | {r['s_pr']:.2f} | {r['g_roc']:.2f} | "
            f"{r['s_roc']:.2f} |",
            flush=True,
        )
    means = {k: float(np.mean([t[k] for t in table.values()])) for k in ("g_pr", "s_pr", "g_roc", "s_roc")}
    print(f"| **mean** | | {means['g_pr']:.2f} | {means['s_pr']:.2f} | {means['g_roc']:.2f} | {means['s_roc']:.2f} |")
    Path(args.out).write_text(json.dumps({"seeds": list(seeds), "table": table, "means": means}, indent=1))


if __name__ == "__main__":
    main()
