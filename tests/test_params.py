"""Invalid-value tests generated from the constraint tables of every component: detectors, alert policies,
learners and the segmenter all refuse the same way, with one message template, at the start of ``fit``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from segscope._params import Interval, Options, check_params, invalid_values
from segscope.exceptions import ConfigError
from segscope.supervised.nn import TorchLearner
from segscope.supervised.xgb import XGBoostLearner
from segscope.unsupervised.detect import DETECTORS, PyODDetector, make_detector
from segscope.unsupervised.segment import Segmenter
from segscope.unsupervised.threshold import POLICIES

#: The smallest valid construction of each component (policies take a required value).
VALID: dict[type, dict[str, Any]] = {
    POLICIES["fixed"]: {"threshold": 0.5},
    POLICIES["quantile"]: {"quantile": 0.9},
    POLICIES["contamination"]: {"contamination": 0.1},
    POLICIES["budget"]: {"max_alerts": 5, "per": "rows"},
    POLICIES["new_level"]: {"columns": ("new",)},
}
COMPONENTS = [
    *[cls for cls in DETECTORS.values() if cls is not PyODDetector],
    *POLICIES.values(),
    XGBoostLearner,
    TorchLearner,
    Segmenter,
]
X = np.random.default_rng(0).normal(size=(50, 3))


def _fit(component: Any) -> None:
    if hasattr(component, "fit_matrix"):
        component.fit_matrix(X)
    elif hasattr(component, "assign"):
        component.fit(X)
    elif hasattr(component, "predict_raw"):
        component.pretrain(X) if isinstance(component, TorchLearner) else component.fit(
            X, np.zeros(50), np.ones(50), np.zeros(3)
        )
    else:
        component.fit(np.linspace(0, 1, 50))


CASES = [
    (cls, key, value)
    for cls in COMPONENTS
    for key, constraint in cls._constraints.items()
    for value in invalid_values(constraint)
]


@pytest.mark.parametrize(
    ("cls", "key", "value"),
    CASES,
    ids=[f"{c.__name__}-{k}-{'object()' if type(v) is object else repr(v)}" for c, k, v in CASES],  # no address
)
def test_every_constraint_refuses_its_invalid_values(cls: type, key: str, value: Any) -> None:
    component = cls(**{**VALID.get(cls, {}), key: value})
    assert component.get_params()[key] is value  # __init__ only stores
    expected = f"The '{key}' parameter of {cls.__name__} must be "
    with pytest.raises(ConfigError, match=f"^{expected}.* Got .* instead\\.$"):
        component.check_params()
    with pytest.raises(ConfigError, match=f"^{expected}"):
        _fit(component)  # fit validates before any work (and before importing torch or umap)


def test_every_component_has_a_table_and_defaults_pass() -> None:
    assert len(CASES) > 100
    for cls in COMPONENTS:
        assert cls._constraints, cls.__name__
        cls(**VALID.get(cls, {})).check_params()


def test_unknown_parameters_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"IForestDetector has no parameter 'trees'. Known parameters: \["):
        make_detector("iforest", {"trees": 10})


def test_the_message_template() -> None:
    with pytest.raises(ConfigError) as info:
        check_params("QuantileThreshold", {"q": 1.5}, {"q": Interval(float, 0, 1, closed="neither")})
    assert str(info.value) == (
        "The 'q' parameter of QuantileThreshold must be a float in the range (0, 1). Got 1.5 instead."
    )
    with pytest.raises(ConfigError, match="must be one of 'hour', 'day'. Got 'year' instead."):
        check_params("AlertBudget", {"per": "year"}, {"per": Options(("hour", "day"))})
