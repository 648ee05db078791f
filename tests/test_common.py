"""The shared conformance suite over every registered component: detectors, alert policies, learners, the segmenter,
sources and sinks (``segscope.testing.checks``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from segscope.sinks import FileSink, ListSink
from segscope.sources import FileSource, FrameSource
from segscope.supervised.learners import LEARNERS, make_learner
from segscope.testing.checks import (
    planted_matrix,
    yield_detector_checks,
    yield_learner_checks,
    yield_policy_checks,
    yield_segmenter_checks,
    yield_sink_checks,
    yield_source_checks,
)
from segscope.unsupervised.detect import DETECTORS, Detector, PyODDetector
from segscope.unsupervised.threshold import POLICIES


def _detectors() -> list[tuple[str, Detector]]:
    out = []
    for name, cls in sorted(DETECTORS.items()):
        params = cls._test_params() if cls is not PyODDetector else {"model": "LOF", "n_neighbors": 10}
        out.append((name, cls(**params)))
    return out


@pytest.mark.parametrize(
    ("name", "check_name"),
    [(name, check_name) for name, det in _detectors() for check_name, _ in yield_detector_checks(type(det))],
)
def test_detector_conformance(name: str, check_name: str) -> None:
    detector = dict(_detectors())[name]
    check = dict(yield_detector_checks(type(detector)))[check_name]
    check(detector)


def test_every_registered_detector_is_checked() -> None:
    assert {name for name, _ in _detectors()} == set(DETECTORS)


_POLICY_PARAMS: dict[str, dict[str, Any]] = {
    "fixed": {"threshold": 0.8},
    "quantile": {"quantile": 0.95},
    "contamination": {"contamination": 0.05},
    "budget": {"max_alerts": 5, "per": "day", "time_column": "ts"},
    "new_level": {"columns": ("new",)},
}


@pytest.mark.parametrize(
    ("kind", "check_name"), [(k, c) for k in sorted(POLICIES) for c, _ in yield_policy_checks(POLICIES[k])]
)
def test_policy_conformance(kind: str, check_name: str) -> None:
    assert set(_POLICY_PARAMS) == set(POLICIES)
    check = dict(yield_policy_checks(POLICIES[kind]))[check_name]
    check(POLICIES[kind](**_POLICY_PARAMS[kind]))


_LEARNER_PARAMS: dict[str, dict[str, Any]] = {
    "xgboost": {"n_estimators": 30},
    "torch": {"pretrain_epochs": 2, "finetune_steps": 60},
}


@pytest.mark.parametrize(
    ("name", "check_name"), [(n, c) for n in LEARNERS for c, _ in yield_learner_checks(type(make_learner(n)))]
)
def test_learner_conformance(name: str, check_name: str) -> None:
    learner = make_learner(name, **_LEARNER_PARAMS[name])
    dict(yield_learner_checks(type(learner)))[check_name](learner)


def test_segmenter_conformance() -> None:
    from segscope.unsupervised.segment import Segmenter

    x, _ = planted_matrix(900, 5, seed=3)
    segmenter = Segmenter(sample_size=600, n_neighbors=10, n_trees=10).fit(x)
    for _, check in yield_segmenter_checks(Segmenter):
        check(segmenter)


_FRAME = pl.DataFrame({"i": range(2500), "s": [f"v{i % 7}" for i in range(2500)], "x": [i / 3 for i in range(2500)]})


def _file_source(tmp_path: Path, ext: str) -> FileSource:
    path = tmp_path / f"data.{ext}"
    {"parquet": _FRAME.write_parquet, "csv": _FRAME.write_csv, "ndjson": _FRAME.write_ndjson}[ext](path)
    return FileSource(path, batch_size=700)


@pytest.mark.parametrize("kind", ["parquet", "csv", "ndjson", "memory"])
def test_source_conformance(kind: str, tmp_path: Path) -> None:
    source = FrameSource(_FRAME, batch_size=700) if kind == "memory" else _file_source(tmp_path, kind)
    for _, check in yield_source_checks():
        check((source, _FRAME, 700))


def _file_sink(tmp_path: Path, ext: str) -> tuple[Callable[[], FileSink], Callable[[], pl.DataFrame | None]]:
    path = tmp_path / f"out.{ext}"
    reader = {"parquet": pl.read_parquet, "csv": pl.read_csv, "ndjson": pl.read_ndjson}[ext]

    def read_back() -> pl.DataFrame | None:
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        assert not leftovers, leftovers  # no temporary files left behind
        return reader(path) if path.exists() else None

    return (lambda: FileSink(path)), read_back


@pytest.mark.parametrize("kind", ["parquet", "csv", "ndjson", "memory"])
def test_sink_conformance(kind: str, tmp_path: Path) -> None:
    if kind == "memory":
        sinks: list[ListSink] = []

        def make() -> ListSink:
            sinks.append(ListSink())
            return sinks[-1]

        def read_back() -> pl.DataFrame | None:
            last = sinks[-1]
            return last.frame() if last.closed else None

        case: Any = (make, read_back)
    else:
        case = _file_sink(tmp_path, kind)
    for _, check in yield_sink_checks():
        check(case)
