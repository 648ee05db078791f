"""How the segmenter's defaults were chosen: UMAP n_neighbors, the fit sample size, the assignment's min_confidence.

    python benchmarks/segments_defaults.py [--data ../shared/data]

* n_neighbors 15 / 30 / 50: ARI vs the true groups on nslkdd (20,000 rows fitted, 5,000 held out) and river's
  ImageSegments, agreement of the served assignment with the fit-time labels, and on synthetic card
  transactions (3,000 fitted on a 2,000-row sample, 800 new) the number of segments and the share of new records
  that land in one.
* sample_size 5,000 / 10,000 / 20,000 (n_neighbors 30) x seeds 0-3: nslkdd ARI, held-out agreement and fit time;
  the seeds show how much one run's ARI is worth (UMAP + HDBSCAN move a lot with the sample and the seed).
* min_confidence 0.5 / 0.4 / 0.3 / 0.2 / 0 on the nslkdd fit with the defaults: agreement with the fit-time
  labels, the share of rows declined (-1) and the ARI; next to HDBSCAN's own fit-time labels (noise share, ARI).
Writes benchmarks/results/segments_defaults.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from segscope.features.prepare import FeaturePreparer
from segscope.testing.data import make_transactions
from segscope.unsupervised.segment import Segmenter

from _adbench import data_dir, load_image_segments, load_nslkdd

NSLKDD_ROWS = 20_000
SEEDS = (0, 1, 2, 3)


def aris(truth: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    return {f"ari_{name}": adjusted_rand_score(t, labels) for name, t in truth.items()}


def transactions() -> tuple[np.ndarray, np.ndarray]:
    history, new = make_transactions(3000, seed=0), make_transactions(800, seed=1)
    prep = FeaturePreparer(id_column="txn_id", drop=("is_fraud",)).fit(history)
    return prep.transform(prep.validate(history)), prep.transform(prep.validate(new))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "segments_defaults.json"))
    args = parser.parse_args()
    x_nsl, truth_nsl = load_nslkdd(data_dir(args.data), NSLKDD_ROWS + 5000)
    x_img, truth_img = load_image_segments()
    x_txn, x_txn_new = transactions()
    result: dict = {"n_neighbors": {}, "sample_size": {}, "min_confidence": {}}
    # UMAP's one-time compilation outside the timings below: over 4,096 rows, so its nearest-neighbour descent too
    Segmenter(sample_size=5000).fit(x_nsl[:6000])
    fits = {}
    for nn in (15, 30, 50):
        start = time.perf_counter()
        seg = Segmenter(sample_size=NSLKDD_ROWS, n_neighbors=nn).fit(x_nsl)
        seconds = time.perf_counter() - start
        fits[nn] = seg
        txn = Segmenter(sample_size=2000, n_neighbors=nn).fit(x_txn)
        img = Segmenter(sample_size=x_img.shape[0], n_neighbors=nn).fit(x_img)
        result["n_neighbors"][nn] = {
            "nslkdd": {
                "segments": int(seg.segments_.size),
                "fit_seconds": seconds,
                "agreement_fit": seg.agreement_fit_,
                "agreement_held_out": seg.agreement_held_out_,
                **aris(truth_nsl, seg.assign(x_nsl)[0]),
            },
            "image_segments": {
                "segments": int(img.segments_.size),
                "ari": adjusted_rand_score(truth_img, img.assign(x_img)[0]),
            },
            "transactions": {
                "segments": int(txn.segments_.size),
                "new_records_in_a_segment": float((txn.assign(x_txn_new)[0] >= 0).mean()),
                "agreement_held_out": txn.agreement_held_out_,
            },
        }
        print("n_neighbors", nn, json.dumps(result["n_neighbors"][nn]), flush=True)
    default = fits[30]
    for size in (5000, 10_000, NSLKDD_ROWS):
        runs = []
        for seed in SEEDS:
            start = time.perf_counter()
            seg = Segmenter(sample_size=size, seed=seed).fit(x_nsl)
            seconds = time.perf_counter() - start
            runs.append(
                {
                    "seed": seed,
                    "segments": int(seg.segments_.size),
                    "fit_seconds": seconds,
                    "agreement_held_out": seg.agreement_held_out_,
                    **aris(truth_nsl, seg.assign(x_nsl)[0]),
                }
            )
        result["sample_size"][size] = {
            "runs": runs,
            **{
                f"{k}_mean": float(np.mean([r[k] for r in runs]))
                for k in ("ari_attack_category", "ari_attack_type", "fit_seconds")
            },
        }
        print("sample_size", size, json.dumps(result["sample_size"][size]), flush=True)
    fit_labels = default.sample_labels_
    sample_truth = {name: t[default.sample_rows_] for name, t in truth_nsl.items()}
    result["hdbscan_fit_labels"] = {"noise": float((fit_labels < 0).mean()), **aris(sample_truth, fit_labels)}
    print("HDBSCAN's fit-time labels", json.dumps(result["hdbscan_fit_labels"]), flush=True)
    for confidence in (0.5, 0.4, 0.3, 0.2, 0.0):
        default.min_confidence = confidence
        labels = default.assign(x_nsl)[0]
        result["min_confidence"][confidence] = {
            "agreement_fit": float((labels[default.sample_rows_] == fit_labels).mean()),
            "declined": float((labels < 0).mean()),
            **aris(truth_nsl, labels),
        }
        print("min_confidence", confidence, json.dumps(result["min_confidence"][confidence]), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
