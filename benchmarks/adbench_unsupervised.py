"""Unsupervised quality under ADBench's protocol: every detector and candidate ensembles, one run.

    python benchmarks/adbench_unsupervised.py [--data ../shared/data] [--quick]

Fits segscope's Model (feature preparation + calibrated detectors) on the 70% train split without labels and
scores the 30% test split, seeds 1-3, on the nine ADBench sets in ../shared/data. Each detector is fitted once
per split; ensembles combine the same calibrated surprisals the product uses. Writes
benchmarks/results/adbench_unsupervised.json and prints a Markdown table next to ADBench's published figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from segscope.config import DetectorConfig, SegscopeConfig
from segscope.model import Model

from _adbench import ADBENCH_SETS, SEEDS, data_dir, load_set, published, split

DETECTORS = ("iforest", "ecod", "copod", "hbos", "knn", "cblof")


def candidate_ensembles() -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [(d,) for d in DETECTORS]
    for size in range(2, len(DETECTORS) + 1):
        out.extend(itertools.combinations(DETECTORS, size))
    return out


def run(data: Path, sets: tuple[str, ...], seeds: tuple[int, ...]) -> dict:
    results: dict = {}
    for name in sets:
        frame = load_set(data, name)
        for seed in seeds:
            train, test = split(frame, seed)
            cfg = SegscopeConfig(detectors=tuple(DetectorConfig(name=d) for d in DETECTORS), seed=seed)
            cfg = cfg.with_features(id_column=None, drop=("label",))
            t0 = time.perf_counter()
            model = Model(cfg).fit(train)
            fit_s = time.perf_counter() - t0
            x_test = model.preparer_.transform(model.preparer_.validate(test))
            x_ref = None
            surprisal = model.ensemble_.detector_surprisal(x_test)
            ref = np.column_stack(
                [
                    cal.surprisal(det.reference_scores_)
                    for det, cal in zip(model.ensemble_.detectors, model.ensemble_.calibrators_, strict=True)
                ]
            )
            del x_ref
            y = test["label"].to_numpy()
            for combo in candidate_ensembles():
                cols = [DETECTORS.index(d) for d in combo]
                for how in ("mean", "max") if len(combo) > 1 else ("mean",):
                    agg = surprisal[:, cols].mean(axis=1) if how == "mean" else surprisal[:, cols].max(axis=1)
                    key = "+".join(combo) + ("" if len(combo) == 1 else f" ({how})")
                    entry = results.setdefault(key, {}).setdefault(name, {"aucroc": [], "aucpr": []})
                    entry["aucroc"].append(100 * roc_auc_score(y, agg))
                    entry["aucpr"].append(100 * average_precision_score(y, agg))
            _ = ref
            print(f"{name} seed {seed}: fit {fit_s:.1f}s, train {train.height}, test {test.height}", flush=True)
    return results


def summarise(results: dict, sets: tuple[str, ...]) -> dict:
    table = {}
    for key, per_set in results.items():
        roc = {s: float(np.mean(per_set[s]["aucroc"])) for s in sets}
        pr = {s: float(np.mean(per_set[s]["aucpr"])) for s in sets}
        table[key] = {
            "aucroc": roc,
            "aucpr": pr,
            "mean_aucroc": float(np.mean(list(roc.values()))),
            "mean_aucpr": float(np.mean(list(pr.values()))),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--quick", action="store_true", help="seed 1 only")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "adbench_unsupervised.json"))
    parser.add_argument("--default", default="iforest+ecod (max)", help="ensemble to report per set")
    args = parser.parse_args()
    data = data_dir(args.data)
    seeds = (1,) if args.quick else SEEDS
    table = summarise(run(data, ADBENCH_SETS, seeds), ADBENCH_SETS)
    roc_pub, pr_pub = published(data, "AUCROC"), published(data, "AUCPR")

    ranked = sorted(table.items(), key=lambda kv: -kv[1]["mean_aucroc"])
    print("\n| ensemble | mean AUCROC | mean AUCPR |\n|---|---:|---:|")
    for key, row in ranked[:15]:
        print(f"| {key} | {row['mean_aucroc']:.2f} | {row['mean_aucpr']:.2f} |")

    default = table[args.default]
    print(f"\nDefault ensemble: {args.default}\n")
    print("| set | segscope AUCROC | IForest | ECOD | best of 14 | segscope AUCPR | IForest | ECOD | best of 14 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    means = {k: [] for k in ("r", "ri", "re", "rb", "p", "pi", "pe", "pb")}
    for s in ADBENCH_SETS:
        r, p = default["aucroc"][s], default["aucpr"][s]
        ri, re, rb = roc_pub[s]["IForest"], roc_pub[s]["ECOD"], max(roc_pub[s].values())
        pi, pe, pb = pr_pub[s]["IForest"], pr_pub[s]["ECOD"], max(pr_pub[s].values())
        for k, v in zip(means, (r, ri, re, rb, p, pi, pe, pb), strict=True):
            means[k].append(v)
        print(f"| {s} | {r:.2f} | {ri:.2f} | {re:.2f} | {rb:.2f} | {p:.2f} | {pi:.2f} | {pe:.2f} | {pb:.2f} |")
    m = {k: float(np.mean(v)) for k, v in means.items()}
    print(
        f"| **mean** | **{m['r']:.2f}** | {m['ri']:.2f} | {m['re']:.2f} | {m['rb']:.2f} | **{m['p']:.2f}** | "
        f"{m['pi']:.2f} | {m['pe']:.2f} | {m['pb']:.2f} |"
    )
    Path(args.out).write_text(json.dumps({"seeds": list(seeds), "table": table}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
