"""Unsupervised quality on labelled sets the ensemble was not chosen on, against a plain IsolationForest.

    python benchmarks/held_out_unsupervised.py [--data ../shared/data]

The default ensemble was chosen on the nine ADBench sets (benchmarks/adbench_unsupervised.py). Here it meets
four sets it was not chosen on: nslkdd (normal traffic plus 5% attacks sampled, attack columns dropped),
vehicle-insurance claims and Ethereum accounts (fraud; id columns dropped, text columns kept), and AI4I 2020
(synthetic machine failures; the failure-mode sub-labels, ids dropped). Per set and seed 1-3: at most 10,000 rows,
70/30 stratified split, fit without labels on the train split, AUCROC/AUCPR on the test split, for segscope's
default (iforest+ecod, max), the ensemble that scores best on the ADBench sets (iforest+ecod+knn+cblof, mean),
and scikit-learn's IsolationForest (random_state = seed) on the numeric columns with nulls as the train median:
what a plain script would do. Writes benchmarks/results/held_out_unsupervised.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score

from segscope.config import DetectorConfig, SegscopeConfig
from segscope.model import Model

from _adbench import SEEDS, data_dir, split

DROP = {
    "nslkdd": ("attack_type", "attack_category", "difficulty", "split"),
    "fraud_vehicle_insurance": ("PolicyNumber",),
    "fraud_ethereum_accounts": ("Index",),
    "ai4i2020": ("UDI", "Product ID", "Machine failure", "TWF", "HDF", "PWF", "OSF", "RNF"),
}
ADBENCH_BEST = tuple(DetectorConfig(name=n) for n in ("iforest", "ecod", "knn", "cblof"))


def load(data: Path, name: str) -> pl.DataFrame:
    frame = pl.read_parquet(data / f"{name}.parquet").drop(DROP[name])
    if name == "nslkdd":  # attacks are half the file: keep every normal record and 5% as many attacks
        normal = frame.filter(pl.col("label") == 0)
        attacks = frame.filter(pl.col("label") == 1).sample(int(normal.height * 0.05), seed=0)
        frame = pl.concat([normal, attacks])
    return frame


def plain_iforest(train: pl.DataFrame, test: pl.DataFrame, seed: int) -> np.ndarray:
    numeric = [c for c in train.columns if c != "label" and train[c].dtype.is_numeric()]
    medians = train.select(pl.col(numeric).median())
    fill = [pl.col(c).fill_null(medians[c][0]).fill_nan(medians[c][0]) for c in numeric]
    x_train, x_test = train.select(fill).to_numpy(), test.select(fill).to_numpy()
    model = IsolationForest(random_state=seed).fit(x_train)
    return np.asarray(-model.score_samples(x_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "held_out_unsupervised.json"))
    args = parser.parse_args()
    data = data_dir(args.data)
    table: dict = {}
    for name in DROP:
        frame = load(data, name)
        for seed in SEEDS:
            train, test = split(frame, seed)
            y = test["label"].to_numpy()
            scores = {"IsolationForest (scikit-learn)": plain_iforest(train, test, seed)}
            for label, cfg in (
                ("segscope default", SegscopeConfig(seed=seed)),
                ("iforest+ecod+knn+cblof (mean)", SegscopeConfig(seed=seed, detectors=ADBENCH_BEST, combine="mean")),
            ):
                model = Model(cfg.with_features(id_column=None, drop=("label",))).fit(train)
                scores[label] = model.score(test)["anomaly_score"].to_numpy()
            for label, score in scores.items():
                entry = table.setdefault(label, {}).setdefault(name, {"aucroc": [], "aucpr": []})
                entry["aucroc"].append(100 * roc_auc_score(y, score))
                entry["aucpr"].append(100 * average_precision_score(y, score))
        print(f"{name} done", flush=True)
    methods = list(table)
    print("\n| set | " + " | ".join(f"{m} AUCROC / AUCPR" for m in methods) + " |")
    print("|---|" + "---:|" * len(methods))
    means: dict = {m: {"aucroc": [], "aucpr": []} for m in methods}
    for name in DROP:
        cells = []
        for m in methods:
            roc, pr = np.mean(table[m][name]["aucroc"]), np.mean(table[m][name]["aucpr"])
            means[m]["aucroc"].append(roc)
            means[m]["aucpr"].append(pr)
            cells.append(f"{roc:.2f} / {pr:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    summary = {m: {k: float(np.mean(v)) for k, v in d.items()} for m, d in means.items()}
    print(
        "| **mean** | "
        + " | ".join(f"**{summary[m]['aucroc']:.2f} / {summary[m]['aucpr']:.2f}**" for m in methods)
        + " |"
    )
    Path(args.out).write_text(json.dumps({"seeds": list(SEEDS), "table": table, "means": summary}, indent=1))


if __name__ == "__main__":
    main()
