"""hdbscan or fast_hdbscan for the segments' clustering step? Measured on the embedding the segmenter clusters.

    python benchmarks/hdbscan_choice.py [--data ../shared/data] [--rows 20000]

nslkdd (--rows rows, attack columns, label, difficulty and split dropped), prepared and embedded by UMAP
exactly as the segmenter does (5-D, n_neighbors 30, min_dist 0); then both libraries cluster the same embedding
with the segmenter's min_cluster_size / min_samples, in one process, median of 3 (fast_hdbscan compiled first).
Reports time, clusters, noise share, ARI vs the attack classes and the ARI between the two labelings.
Writes benchmarks/results/hdbscan_choice.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fast_hdbscan
import hdbscan
import numpy as np
import umap
from sklearn.metrics import adjusted_rand_score

from _adbench import data_dir, load_nslkdd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "hdbscan_choice.json"))
    args = parser.parse_args()
    x, truth = load_nslkdd(data_dir(args.data), args.rows)
    embedding = umap.UMAP(n_neighbors=30, n_components=5, min_dist=0.0, random_state=0, n_jobs=1).fit(x).embedding_
    mcs = max(15, args.rows // 200)  # the segmenter's defaults
    ms = max(5, mcs // 3)
    fast_hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=ms).fit_predict(embedding[:1000])  # Numba compile
    makers = {
        "hdbscan": lambda: hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=ms, prediction_data=True),
        "fast_hdbscan": lambda: fast_hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=ms),
    }
    result: dict = {"rows": args.rows}
    labels = {}
    for name, make in makers.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            labels[name] = make().fit_predict(embedding)
            times.append(time.perf_counter() - start)
        lab = labels[name]
        result[name] = {
            "seconds_median": float(np.median(times)),
            "clusters": int(lab.max() + 1),
            "noise": float((lab < 0).mean()),
            **{f"ari_{c}": adjusted_rand_score(t, lab) for c, t in truth.items()},
        }
        print(name, json.dumps(result[name]), flush=True)
    result["ari_between"] = adjusted_rand_score(labels["hdbscan"], labels["fast_hdbscan"])
    print(f"ARI between the two: {result['ari_between']:.3f}")
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
