"""Fine-tuning time on 100k history rows, per learner, on this machine.

    python benchmarks/finetune_speed.py [--rows 100000] [--repeats 3]

Generated card transactions (8 input columns -> 9 prepared features + 3 unsupervised outputs); labels: 1% of
the records, half of them confirmed anomalies, half confirmed normals. Times `segscope.pipeline.finetune`
end to end (supervision matrix, out-of-fold calibration, the final fit, policy, held-out comparison) and
reports medians. Writes benchmarks/results/finetune_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import polars as pl

from segscope import Model
from segscope.config import SegscopeConfig
from segscope.labels.parse import normalise_labels
from segscope.testing.data import make_transactions
from segscope.tuning import finetune


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
        pl.DataFrame(
            {
                "id": [*fraud["txn_id"], *normal["txn_id"]],
                "label": ["anomaly"] * n + ["normal"] * n,
            }
        )
    )
    result: dict = {"rows": args.rows, "labels": labels.height, "repeats": args.repeats}
    for learner in args.learners.split(","):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            finetune(model, history, labels, learner=learner)
            times.append(time.perf_counter() - start)
        result[f"{learner}_seconds_median"] = statistics.median(times)
        print(
            f"{learner}: {statistics.median(times):.1f} s median over {args.repeats} ({args.rows:,} rows)", flush=True
        )
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
