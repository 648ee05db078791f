"""What a fine-tune costs, the promotion gate included, against one plain XGBoost fit on the same labels.

    python benchmarks/finetune_speed.py [--rows 100000] [--repeats 3] [--learners xgboost,torch]

Generated card transactions (8 input columns -> 9 prepared features + 3 unsupervised outputs); labels: 1% of
the records, half of them confirmed anomalies, half confirmed normals. Times ``segscope.tuning.finetune`` end to
end (the supervision matrix, the gate's out-of-fold fits and the choice of capacity and blend, the final fit, the
alert policy, the comparison with the current version) and, in the same run, one plain ``XGBClassifier()`` fit
(defaults, the input columns one-hot, unlabelled rows as normal): the cost of a fine-tune is reported as the ratio
of the medians. Writes benchmarks/results/finetune_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import xgboost as xgb

from segscope import Model
from segscope.config import SegscopeConfig
from segscope.labels.parse import normalise_labels
from segscope.testing.data import make_transactions
from segscope.tuning import finetune


def one_hot(history: pl.DataFrame, drop: tuple[str, ...]) -> np.ndarray:
    columns = [c for c in history.columns if c not in drop]
    frame = history.select(columns)
    text = [c for c in columns if frame.schema[c] in (pl.String, pl.Categorical)]
    frame = frame.with_columns(pl.col(c).dt.epoch("s") for c in columns if frame.schema[c].is_temporal())
    return frame.to_dummies(text).cast(pl.Float64, strict=False).to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--learners", default="xgboost,torch")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "finetune_speed.json"))
    args = parser.parse_args()
    history = make_transactions(args.rows, seed=0)
    model = Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(history)
    n = max(2, args.rows // 200)
    fraud = history.filter(pl.col("is_fraud") == 1).sample(n, seed=1)
    normal = history.filter(pl.col("is_fraud") == 0).sample(n, seed=1)
    labels = normalise_labels(
        pl.DataFrame({"id": [*fraud["txn_id"], *normal["txn_id"]], "label": ["anomaly"] * n + ["normal"] * n})
    )
    plain_x = one_hot(history, ("is_fraud", "txn_id"))
    plain_y = history["txn_id"].is_in(fraud["txn_id"].implode()).to_numpy().astype(np.int64)
    result: dict[str, Any] = {"rows": args.rows, "labels": labels.height, "repeats": args.repeats}
    plain = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        xgb.XGBClassifier(n_jobs=2).fit(plain_x, plain_y)
        plain.append(time.perf_counter() - start)
    result["plain_xgboost_seconds_median"] = statistics.median(plain)
    print(f"plain XGBoost: {statistics.median(plain):.2f} s median over {args.repeats}", flush=True)
    for learner in args.learners.split(","):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _, report = finetune(model, history, labels, learner=learner)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        result[f"{learner}_seconds_median"] = median
        result[f"{learner}_over_plain_xgboost"] = median / statistics.median(plain)
        result[f"{learner}_chosen"] = report.get("candidates", {}).get("chosen")
        print(
            f"{learner}: {median:.1f} s median over {args.repeats} ({args.rows:,} rows), "
            f"{median / statistics.median(plain):.1f}x one plain XGBoost fit",
            flush=True,
        )
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
