from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from segscope.exceptions import ConfigError, SchemaError
from segscope.unsupervised.calibrate import ReferenceCalibrator
from segscope.unsupervised.threshold import AlertBudget, ContaminationThreshold, FixedThreshold, QuantileThreshold

REFERENCES = st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=300)
RAWS = st.lists(st.floats(-1e7, 1e7), min_size=1, max_size=50)


@settings(deadline=None)  # the first example loads the compiled kernel
@given(reference=REFERENCES, raw=RAWS)
# found by hypothesis: reference values a subnormal apart overflow np.interp's slope
@example(reference=[0.0, 1.0, -2.225073858507e-311], raw=[0.0, -2.2250738585e-313])
def test_calibration_is_monotone_and_in_unit_interval(reference: list[float], raw: list[float]) -> None:
    cal = ReferenceCalibrator().fit(np.array(reference))
    values = np.sort(np.array(raw))
    p = cal.probability(values)
    assert ((p >= 0) & (p <= 1)).all()
    assert (np.diff(cal.surprisal(values)) >= 0).all()


@settings(deadline=None)  # the first example loads the compiled kernel
@given(reference=REFERENCES, raw=RAWS)
@example(reference=[0.0, 1.0, -2.225073858507e-311], raw=[0.0, -2.2250738585e-313])
@example(reference=[0.0, 5e-324], raw=[1.0])  # found by hypothesis: a tail of scale 0 (every point past it is 1e12)
def test_surprisal_is_the_interpolated_ecdf_with_its_tail(reference: list[float], raw: list[float]) -> None:
    """The compiled one-pass surprisal against the formula in NumPy: ``np.interp`` capped at the tail's start,
    the exponential tail above it."""
    cal = ReferenceCalibrator().fit(np.array(reference))
    x = np.array(raw)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        body = np.interp(x, cal.values_, cal.probs_, left=0.0)
        want = -np.log1p(-np.minimum(body, cal.tail_p_))
        tail = x > cal.tail_q_
        want[tail] = -np.log1p(-cal.tail_p_) + np.minimum((x[tail] - cal.tail_q_) / cal.tail_scale_, 1e12)
    usual = np.isfinite(body) | tail  # np.interp's slope can overflow between subnormals: redone by share
    np.testing.assert_allclose(cal.surprisal(x)[usual], want[usual], rtol=1e-14, atol=0)


def test_calibration_matches_the_reference_quantiles() -> None:
    ref = np.random.default_rng(0).normal(size=20_000)
    cal = ReferenceCalibrator().fit(ref)
    for q in (0.1, 0.5, 0.9, 0.97):
        assert cal.probability(np.array([np.quantile(ref, q)]))[0] == pytest.approx(q, abs=0.002)


def test_tail_keeps_extremes_ranked() -> None:
    cal = ReferenceCalibrator().fit(np.random.default_rng(0).normal(size=5000))
    s = cal.surprisal(np.array([5.0, 10.0, 50.0, 500.0]))
    assert (np.diff(s) > 0).all()
    assert np.isfinite(s).all()


def test_contamination_alerts_that_share_of_the_reference() -> None:
    ref = np.random.default_rng(1).uniform(size=10_000)
    policy = ContaminationThreshold(0.02).fit(ref)
    assert policy.decide(ref, pl.DataFrame()).mean() == pytest.approx(0.02, abs=1e-3)
    assert QuantileThreshold(0.98).fit(ref).threshold_ == policy.threshold_


def test_fixed_threshold() -> None:
    policy = FixedThreshold(0.5).fit(np.zeros(3))
    np.testing.assert_array_equal(policy.decide(np.array([0.2, 0.5, 0.9]), pl.DataFrame()), [False, True, True])


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (FixedThreshold(1.5), "threshold"),
        (QuantileThreshold(1.0), "quantile"),
        (ContaminationThreshold(0), "contamination"),
    ],
)
def test_invalid_policies(policy, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        policy.fit(np.zeros(3))


def test_budget_per_rows_never_exceeds_and_carries_across_batches() -> None:
    rng = np.random.default_rng(2)
    ref = rng.uniform(size=10_000)
    policy = AlertBudget(5, per="rows", rows=100).fit(ref)
    scores = rng.uniform(size=1000) ** 0.1  # many high scores
    state = policy.new_state()
    decided = np.concatenate([policy.decide(scores[i : i + 70], pl.DataFrame(), state) for i in range(0, 1000, 70)])
    per_window = decided.reshape(10, 100).sum(axis=1)
    assert (per_window == 5).all()
    # the fitted policy never changes: without a state each batch is decided on its own
    assert policy.decide(scores[:70], pl.DataFrame()).sum() == 5
    assert policy.decide(scores[:70], pl.DataFrame()).sum() == 5


def test_budget_per_day_uses_the_time_column() -> None:
    start = datetime(2026, 1, 1)
    times = [start + timedelta(hours=i) for i in range(24 * 5)]
    frame = pl.DataFrame({"ts": times})
    ref = np.linspace(0, 1, len(times))
    policy = AlertBudget(3, per="day", time_column="ts").fit(ref, frame)
    decided = policy.decide(np.ones(len(times)), frame)
    counts = pl.DataFrame({"day": [t.date() for t in times], "a": decided}).group_by("day").agg(pl.col("a").sum())
    assert (counts["a"] == 3).all()
    with pytest.raises(SchemaError, match="needs the time column 'ts'"):
        policy.decide(np.ones(2), pl.DataFrame({"x": [1, 2]}))
