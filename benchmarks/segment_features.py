"""Do segment membership and confidence help the fine-tuned learner?

    python benchmarks/segment_features.py [--data ../shared/data] [--seeds 1,2,3]
    python benchmarks/segment_features.py --held-out    # the four sets of held_out_unsupervised.py instead

ADBench's label-informed protocol (see adbench_label_informed.py) with segments enabled: the same fitted model,
the same revealed labels (gamma_l = 1% and 5% of the training anomalies), the XGBoost learner fine-tuned once on
the supervision matrix without and once with the segment columns (one-hot membership + assignment confidence).
Test AUCPR per set, mean over seeds. With ``--held-out``, the four sets that chose nothing (nslkdd with 5%
attacks, vehicle claims, Ethereum accounts, AI4I 2020; as benchmarks/held_out_unsupervised.py loads them) with
5 / 20 / 80 labelled anomalies (all of them where fewer). Writes benchmarks/results/segment_features[_held_out].json
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from segscope.config import SegmentsConfig, SegscopeConfig
from segscope.model import Model
from segscope.supervised.learners import make_finetuned

from _adbench import ADBENCH_SETS, data_dir, load_set, n_labelled, reveal, split
from held_out_unsupervised import DROP, load

GAMMAS = (0.01, 0.05)
COUNTS = (5, 20, 80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--sets", default=",".join(ADBENCH_SETS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--held-out", action="store_true", help="the four held-out sets, 5 / 20 / 80 labels")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = data_dir(args.data)
    name_out = "segment_features_held_out.json" if args.held_out else "segment_features.json"
    out = Path(args.out or Path(__file__).parent / "results" / name_out)
    results: dict[str, dict[str, list[float]]] = {}
    for name in DROP if args.held_out else args.sets.split(","):
        frame = load(data, name) if args.held_out else load_set(data, name)
        n_anomalies = int(frame["label"].sum())
        for seed in (int(s) for s in args.seeds.split(",")):
            train, test = split(frame, seed)
            cfg = SegscopeConfig(seed=seed, segments=SegmentsConfig(enabled=True))
            model = Model(cfg.with_features(id_column=None, drop=("label",))).fit(train)
            y_test = test["label"].to_numpy()
            for level in COUNTS if args.held_out else GAMMAS:
                y = reveal(train, int(level) if args.held_out else n_labelled(n_anomalies, level), seed)
                for with_segments in (False, True):
                    x_train, layout, _ = model.supervision_matrix(train, with_segments=with_segments)
                    x_test, _, _ = model.supervision_matrix(test, with_segments=with_segments)
                    tuned = make_finetuned("xgboost", n_features=model.n_features, seed=seed)
                    tuned.fit(x_train, y, y == 1, layout)
                    at = f"{level} labelled" if args.held_out else f"{int(level * 100)}%"
                    key = f"{'with' if with_segments else 'without'} segments @ {at}"
                    ap = 100 * average_precision_score(y_test, tuned.predict_proba(x_test))
                    results.setdefault(name, {}).setdefault(key, []).append(ap)
            print(name, seed, {k: round(v[-1], 2) for k, v in results[name].items()}, flush=True)
    keys = list(next(iter(results.values())))
    print("\n| set | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, by in results.items():
        print(f"| {name} | " + " | ".join(f"{np.mean(by[k]):.2f}" for k in keys) + " |")
    print(
        "| **mean** | "
        + " | ".join(f"**{np.mean([np.mean(by[k]) for by in results.values()]):.2f}**" for k in keys)
        + " |"
    )
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
