"""Segmentation quality where true groups are known, and assignment speed/agreement.

    python benchmarks/segments_quality.py [--data ../shared/data] [--rows 20000]

On nslkdd (segments vs attack_category and attack_type; those columns, label, difficulty and split dropped
before fitting), in one run: adjusted Rand index of segscope's segments (UMAP + HDBSCAN, served by the
distilled forest), of KMeans with the true k (on the prepared features, and on the same features standardised:
the fair version, since the robust scaling leaves a few extreme values that dominate KMeans' squared distances),
and of plain HDBSCAN on the prepared features without UMAP. The segmenter fits on --rows rows; 5,000 more rows
are held out to measure the agreement of the served assignment with HDBSCAN's own out-of-sample labels.
Then assignment speed (rows/s) on 1M rows.
Writes benchmarks/results/segments_quality.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import hdbscan
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from segscope.unsupervised.segment import Segmenter

from _adbench import data_dir, load_image_segments, load_nslkdd


def kmeans_labels(x: np.ndarray, k: int, *, standardise: bool) -> np.ndarray:
    from sklearn.preprocessing import StandardScaler

    data = StandardScaler().fit_transform(x) if standardise else x
    return KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(data)


def versions() -> dict[str, str]:
    """UMAP's and HDBSCAN's output (so the ARIs) move with library versions: record them next to the figures."""
    from importlib.metadata import version

    return {p: version(p) for p in ("umap-learn", "hdbscan", "pynndescent", "numba", "scikit-learn", "numpy")}


def image_segments() -> dict:
    """river's bundled ImageSegments (2,310 rows, 7 classes)."""
    x, truth = load_image_segments()
    labels, _ = Segmenter(sample_size=x.shape[0]).fit(x).assign(x)
    return {
        "rows": x.shape[0],
        "true_k": 7,
        "ari_segscope": adjusted_rand_score(truth, labels),
        "ari_kmeans_true_k": adjusted_rand_score(truth, kmeans_labels(x, 7, standardise=False)),
        "ari_kmeans_true_k_standardised": adjusted_rand_score(truth, kmeans_labels(x, 7, standardise=True)),
        "ari_hdbscan_no_umap": adjusted_rand_score(truth, hdbscan.HDBSCAN(min_cluster_size=15).fit_predict(x)),
    }


def fit_one_million() -> float:
    """`segscope fit` with segments on a 1M-row x 20-column Parquet file (the default 100k-row fit sample)."""
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from score_speed import write_table

    from segscope.config import SegmentsConfig, SegscopeConfig
    from segscope.pipeline import fit_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.parquet"
        write_table(path, 1_000_000, seed=0)
        start = time.perf_counter()
        fit_file(path, SegscopeConfig(segments=SegmentsConfig(enabled=True)))
        return time.perf_counter() - start


def markdown(r: dict) -> str:
    """The results table of benchmarks/results/segments_quality.md, from the run's result."""
    groups = [
        ("nslkdd vs `attack_category` (6)", r["attack_category"]),
        ("nslkdd vs `attack_type` (39)", r["attack_type"]),
        ("river ImageSegments (7 classes)", r["image_segments"]),
    ]
    lines = [
        "# Segmentation quality (python benchmarks/segments_quality.py)",
        "",
        "Library versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
        "",
        "Adjusted Rand index vs the true classes, measured in one run:",
        "",
        "| | segscope (UMAP + HDBSCAN, served) | segscope fit-time HDBSCAN labels | KMeans, true k, standardised "
        "| KMeans, true k, robust-scaled | HDBSCAN without UMAP |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in groups:
        fit_labels = f"{d['ari_segscope_fit_labels']:.2f}" if "ari_segscope_fit_labels" in d else "n/a"
        lines.append(
            f"| {name} | {d['ari_segscope']:.2f} | {fit_labels} | {d['ari_kmeans_true_k_standardised']:.2f} "
            f"| {d['ari_kmeans_true_k']:.2f} | {d['ari_hdbscan_no_umap']:.2f} |"
        )
    return "\n".join(
        [
            *lines,
            "",
            f"nslkdd: {r['rows']:,} rows fitted + {r['held_out_rows']:,} held out, {r['features']} prepared features, "
            f"{r['segments']} segments, fit {r['segscope_fit_seconds']:.0f} s (first UMAP call in the process).",
            f"Agreement of the served assignment with HDBSCAN's fit-time labels: {100 * r['agreement_fit']:.1f}% on "
            f"the fit sample, {100 * r['agreement_held_out']:.1f}% on held-out rows.",
            f"Assignment speed: {r['assign_rows_per_s'] / 1000:.0f}k rows/s on 1M rows. `fit` with segments on "
            f"1M x 20 (in-process, UMAP already compiled): {r['fit_1m_x_20_seconds']:.1f} s.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "segments_quality.json"))
    args = parser.parse_args()
    x, truth = load_nslkdd(data_dir(args.data), args.rows + 5000)
    result: dict = {"rows": args.rows, "held_out_rows": 5000, "features": x.shape[1], "versions": versions()}
    start = time.perf_counter()
    seg = Segmenter(sample_size=args.rows).fit(x)
    result["segscope_fit_seconds"] = time.perf_counter() - start
    ours, _ = seg.assign(x)
    result["segments"] = int(seg.segments_.size)
    result["agreement_fit"], result["agreement_held_out"] = seg.agreement_fit_, seg.agreement_held_out_
    for name, labels in truth.items():
        k = len(np.unique(labels))
        plain = hdbscan.HDBSCAN(min_cluster_size=max(15, args.rows // 200)).fit_predict(x)
        result[name] = {
            "true_k": k,
            "ari_segscope": adjusted_rand_score(labels, ours),
            "ari_segscope_fit_labels": adjusted_rand_score(labels[seg.sample_rows_], seg.sample_labels_),
            "ari_kmeans_true_k": adjusted_rand_score(labels, kmeans_labels(x, k, standardise=False)),
            "ari_kmeans_true_k_standardised": adjusted_rand_score(labels, kmeans_labels(x, k, standardise=True)),
            "ari_hdbscan_no_umap": adjusted_rand_score(labels, plain),
        }
        print(name, json.dumps(result[name]), flush=True)
    result["image_segments"] = image_segments()
    print("image_segments", json.dumps(result["image_segments"]), flush=True)
    result["fit_1m_x_20_seconds"] = fit_one_million()
    print(f"fit on 1M x 20 with segments: {result['fit_1m_x_20_seconds']:.1f} s", flush=True)
    big = np.repeat(x, int(np.ceil(1_000_000 / x.shape[0])), axis=0)[:1_000_000]
    seg.assign(big[:1000])
    start = time.perf_counter()
    seg.assign(big)
    result["assign_rows_per_s"] = 1_000_000 / (time.perf_counter() - start)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))
    Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out).with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
