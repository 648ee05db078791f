"""The shared conformance suite over every registered detector."""

from __future__ import annotations

import pytest

from segscope.testing.checks import yield_detector_checks
from segscope.unsupervised.detect import DETECTORS, Detector, PyODDetector


def _instances() -> list[tuple[str, Detector]]:
    out = []
    for name, cls in sorted(DETECTORS.items()):
        params = cls._test_params() if cls is not PyODDetector else {"model": "LOF", "n_neighbors": 10}
        out.append((name, cls(**params)))
    return out


@pytest.mark.parametrize(
    ("name", "check_name"),
    [(name, check_name) for name, det in _instances() for check_name, _ in yield_detector_checks(type(det))],
)
def test_detector_conformance(name: str, check_name: str) -> None:
    detector = dict(_instances())[name]
    check = dict(yield_detector_checks(type(detector)))[check_name]
    check(detector)


def test_every_registered_detector_is_checked() -> None:
    assert {name for name, _ in _instances()} == set(DETECTORS)
