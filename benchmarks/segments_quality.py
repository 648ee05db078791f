"""Segmentation quality where true groups are known, and assignment speed/agreement.

    python benchmarks/segments_quality.py [--data ../shared/data] [--rows 20000] [--seeds 0,1,2]

Four sets with known groups: nslkdd (segments vs attack_category and attack_type; those columns, label,
difficulty and split dropped before fitting), river's ImageSegments (7 classes), scikit-learn's handwritten
digits (10 classes) and wines (3 cultivars; not used to choose the HDBSCAN settings, and one of the four the
boundaries were measured on). For each, in one
run and per seed (the segmenter's UMAP seed and KMeans' seed): adjusted Rand index of segscope's served
segments (UMAP + HDBSCAN, boundaries drawn in the features, distilled into the forest; every record gets its
nearest segment), of the fit-time labels, of the same with the boundaries drawn in the embedding (as before
``boundaries="linear"``: ``boundaries="embedding"``), of KMeans with the true k on the standardised features
(the fair version: the robust scaling leaves a few extreme values that dominate KMeans' squared distances) and
on the prepared ones, and of plain HDBSCAN without UMAP. nslkdd fits on --rows rows; 5,000 more are held out
to measure the agreement of the served assignment with the fit-time segmentation applied to them. Then
assignment speed (rows/s) on 1M rows and the fit time of `segscope fit` with segments on 1M x 20. Writes
benchmarks/results/segments_quality.json and .md (means over the seeds, with the range).
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


def kmeans_labels(x: np.ndarray, k: int, seed: int, *, standardise: bool) -> np.ndarray:
    from sklearn.preprocessing import StandardScaler

    data = StandardScaler().fit_transform(x) if standardise else x
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(data)


def versions() -> dict[str, str]:
    """UMAP's and HDBSCAN's output (so the ARIs) move with library versions: record them next to the figures."""
    from importlib.metadata import version

    return {p: version(p) for p in ("umap-learn", "hdbscan", "pynndescent", "numba", "scikit-learn", "numpy")}


def sklearn_set(name: str) -> tuple[np.ndarray, np.ndarray]:
    """One of scikit-learn's bundled labelled sets ("digits": 1,797 8x8 images, 10 classes; "wine": 178 wines,
    3 cultivars): prepared features and the classes."""
    import polars as pl
    from sklearn import datasets

    from segscope.features.prepare import FeaturePreparer

    data = datasets.load_digits() if name == "digits" else datasets.load_wine()
    frame = pl.DataFrame(data.data, schema=[f"pixel_{i}" for i in range(data.data.shape[1])])
    prep = FeaturePreparer().fit(frame)
    return prep.transform(prep.validate(frame)), data.target


def compare(x: np.ndarray, truths: dict[str, np.ndarray], seed: int, sample_size: int) -> tuple[Segmenter, dict]:
    """ARIs of segscope's segments and the baselines against each truth, for one seed."""
    start = time.perf_counter()
    seg = Segmenter(sample_size=sample_size, seed=seed).fit(x)
    fit_seconds = time.perf_counter() - start
    ours, _ = seg.assign(x)
    before = Segmenter(sample_size=sample_size, seed=seed, boundaries="embedding").fit(x).assign(x)[0]
    fitted = seg.sample_rows_
    plain = hdbscan.HDBSCAN(min_cluster_size=max(15, min(x.shape[0], sample_size) // 200)).fit_predict(x)
    out: dict = {"segments": int(seg.segments_.size), "noise_share": seg.noise_share_, "fit_seconds": fit_seconds}
    for name, labels in truths.items():
        k = len(np.unique(labels))
        out[name] = {
            "true_k": k,
            "ari_segscope": adjusted_rand_score(labels, ours),
            "ari_segscope_fit_labels": adjusted_rand_score(labels[fitted], seg.sample_labels_),
            "ari_segscope_embedding_boundaries": adjusted_rand_score(labels, before),
            "ari_kmeans_true_k": adjusted_rand_score(labels, kmeans_labels(x, k, seed, standardise=False)),
            "ari_kmeans_true_k_standardised": adjusted_rand_score(labels, kmeans_labels(x, k, seed, standardise=True)),
            "ari_hdbscan_no_umap": adjusted_rand_score(labels, plain),
        }
    return seg, out


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


COLUMNS = (
    ("ari_segscope", "segscope (served)"),
    ("ari_segscope_fit_labels", "segscope fit-time labels"),
    ("ari_segscope_embedding_boundaries", "segscope, boundaries in the embedding (before)"),
    ("ari_kmeans_true_k_standardised", "KMeans, true k, standardised"),
    ("ari_kmeans_true_k", "KMeans, true k, robust-scaled"),
    ("ari_hdbscan_no_umap", "HDBSCAN without UMAP"),
)
GROUPS = (
    ("nslkdd", "attack_category", "nslkdd vs `attack_category` (6)"),
    ("nslkdd", "attack_type", "nslkdd vs `attack_type` (39)"),
    ("image_segments", "classes", "river ImageSegments (7 classes)"),
    ("digits", "classes", "scikit-learn digits (10 classes)"),
    ("wine", "classes", "scikit-learn wine (3 classes; not used to choose the HDBSCAN settings)"),
)


def summarise(runs: list[dict]) -> dict:
    """Mean, min and max over the seeds of every ARI, per set and truth."""
    out: dict = {}
    for data_set, truth, _ in GROUPS:
        for key, _ in COLUMNS:
            values = [run[data_set][truth][key] for run in runs]
            out.setdefault(data_set, {}).setdefault(truth, {})[key] = {
                "mean": float(np.mean(values)),
                "min": float(np.min(values)),
                "max": float(np.max(values)),
            }
    return out


def markdown(r: dict) -> str:
    """The results table of benchmarks/results/segments_quality.md, from the run's result."""
    lines = [
        "# Segmentation quality (python benchmarks/segments_quality.py)",
        "",
        "Library versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
        "",
        f"Adjusted Rand index vs the true classes, mean over seeds {r['seeds']} (min-max), measured in one run:",
        "",
        "| | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for data_set, truth, label in GROUPS:
        cells = r["summary"][data_set][truth]
        lines.append(
            f"| {label} | "
            + " | ".join(
                f"{cells[key]['mean']:.2f} ({cells[key]['min']:.2f}-{cells[key]['max']:.2f})" for key, _ in COLUMNS
            )
            + " |"
        )
    first = r["runs"][0]
    noise = ", ".join(f"{run['nslkdd']['noise_share']:.0%}" for run in r["runs"])
    return "\n".join(
        [
            *lines,
            "",
            f"nslkdd: {r['rows']:,} rows fitted + {r['held_out_rows']:,} held out, {r['features']} prepared features; "
            f"segments per seed: {[run['nslkdd']['segments'] for run in r['runs']]} (HDBSCAN noise, labelled by the "
            f"segments' boundaries in the features: {noise}); "
            f"ImageSegments {[run['image_segments']['segments'] for run in r['runs']]}, digits "
            f"{[run['digits']['segments'] for run in r['runs']]}, wine "
            f"{[run['wine']['segments'] for run in r['runs']]}. Fit {first['fit_seconds']:.0f} s (seed "
            f"{r['seeds'][0]}, first UMAP call in the process).",
            f"Agreement of the served assignment with the fit-time segmentation (seed {r['seeds'][0]}): "
            f"{100 * r['agreement_fit']:.1f}% on the fit sample, "
            f"{100 * r['agreement_held_out']:.1f}% on held-out rows.",
            f"Assignment speed: {r['assign_rows_per_s'] / 1000:.0f}k rows/s on 1M rows. `fit` with segments on "
            f"1M x 20 (in-process, UMAP already compiled): {r['fit_1m_x_20_seconds']:.1f} s.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "segments_quality.json"))
    args = parser.parse_args()
    seeds = [int(v) for v in args.seeds.split(",")]
    x, truth = load_nslkdd(data_dir(args.data), args.rows + 5000)
    sets = {"nslkdd": (x, truth)}
    images, image_truth = load_image_segments()
    sets["image_segments"] = (images, {"classes": image_truth})
    for name in ("digits", "wine"):
        matrix, classes = sklearn_set(name)
        sets[name] = (matrix, {"classes": classes})
    result: dict = {"rows": args.rows, "held_out_rows": 5000, "features": x.shape[1], "versions": versions()}
    result["seeds"], result["runs"] = seeds, []
    first_seg = None
    for seed in seeds:
        run: dict = {}
        for name, (matrix, truths) in sets.items():
            seg, run[name] = compare(matrix, truths, seed, args.rows)
            if name == "nslkdd":
                run["fit_seconds"] = run[name]["fit_seconds"]
                first_seg = first_seg or seg
            print(seed, name, json.dumps(run[name]), flush=True)
        result["runs"].append(run)
    result["summary"] = summarise(result["runs"])
    assert first_seg is not None
    result["agreement_fit"], result["agreement_held_out"] = first_seg.agreement_fit_, first_seg.agreement_held_out_
    result["fit_1m_x_20_seconds"] = fit_one_million()
    print(f"fit on 1M x 20 with segments: {result['fit_1m_x_20_seconds']:.1f} s", flush=True)
    big = np.repeat(x, int(np.ceil(1_000_000 / x.shape[0])), axis=0)[:1_000_000]
    first_seg.assign(big[:1000])
    start = time.perf_counter()
    first_seg.assign(big)
    result["assign_rows_per_s"] = 1_000_000 / (time.perf_counter() - start)
    Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out).with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
