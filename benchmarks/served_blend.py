"""Whether blending the fine-tuned candidate with a plain XGBoost keeps both at least as good as the plain one.

    python benchmarks/served_blend.py [--data ../shared/data] [--sets mammography,cardio] [--shares 0.05]
        [--draws 5] [--out served_blend]

``served_model.py``'s protocol (the same splits, labelled rows per draw: seed = draw, the same plain
``XGBClassifier()`` on one-hot columns). Per draw: the candidate ``finetune`` writes (promoted or not), what the
registry serves, the plain XGBoost, and the rank averages ``(1 - w) * rank(candidate) + w * rank(plain)`` for
w = 0.25 and 0.5, AUCROC / AUCPR on the scoring part. A diagnostic, not the product: the ranks are taken over
the scoring part itself (a product would rank each score against a reference kept at fit), and the blend is
judged without the gate. Writes benchmarks/results/<out>.json and prints the means.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import xgboost as xgb
from scipy.stats import rankdata
from served_model import as_labels, figures, load, one_hot, reveal

from segscope._io import write_text_atomic
from segscope.config import SegscopeConfig
from segscope.model import Model
from segscope.tuning import finetune

from _adbench import data_dir

RESULTS = Path(__file__).parent / "results"
WEIGHTS = (0.25, 0.5)


def draws_of(data: Path, name: str, share: float, draws: int) -> list[dict[str, Any]]:
    train, test, drop, id_column = load(data, name)
    model = Model(SegscopeConfig().with_features(id_column=id_column, drop=drop)).fit(train)
    current = model.score(test)["score"].to_numpy()
    plain_train, plain_test = one_hot(train, test, drop, id_column)
    y_test, ids = test["label"].to_numpy(), train[id_column].cast(pl.String)
    out = []
    for draw in range(draws):
        y, labelled = reveal(name, train["label"].to_numpy(), share, draw)
        candidate, report = finetune(model, train, as_labels(ids, y, labelled))
        fine = candidate.score(test)["score"].to_numpy()
        plain = xgb.XGBClassifier(n_jobs=2, random_state=draw).fit(plain_train, y).predict_proba(plain_test)[:, 1]
        row = {
            "draw": draw,
            "promoted": bool(report["promote"]),
            "candidate": figures(y_test, fine),
            "served": figures(y_test, fine if report["promote"] else current),
            "plain xgboost": figures(y_test, plain),
        }
        for w in WEIGHTS:
            row[f"rank average w={w:g}"] = figures(y_test, (1 - w) * rankdata(fine) + w * rankdata(plain))
        out.append(row)
        print(f"{name} {share:.0%} draw {draw}: {json.dumps(row)}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--sets", default="mammography")
    parser.add_argument("--shares", default="0.05")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--out", default="served_blend")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    data = data_dir(args.data)
    results: dict[str, Any] = {}
    for name in args.sets.split(","):
        for share in (float(s) for s in args.shares.split(",")):
            runs = results.setdefault(name, {})[f"{share:.0%}"] = draws_of(data, name, share, args.draws)
            for variant in [k for k in runs[0] if k not in ("draw", "promoted")]:
                roc, pr = (np.mean([r[variant][m] for r in runs]) for m in ("aucroc", "aucpr"))
                print(f"  {name} {share:.0%} {variant:22s} AUCROC {roc:.3f}  AUCPR {pr:.3f}")
    RESULTS.mkdir(exist_ok=True)
    write_text_atomic(RESULTS / f"{args.out}.json", json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
