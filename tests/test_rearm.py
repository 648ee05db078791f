"""policy.rearm: a cooldown that ends once the machine is back to normal, so a false alarm does not hide the fault
that follows it; decided in order from the entity state, the same in any batches and across a checkpoint."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from segscope.config import config_from_dict
from segscope.exceptions import ConfigError
from segscope.features import _entity_kernel as kernel
from segscope.model import Model


def _reference(raw: np.ndarray, slots: np.ndarray, when: np.ndarray, gap: float, rearm: float) -> np.ndarray:
    last_alert: dict[int, float] = {}
    last_raw: dict[int, float] = {}
    out = np.zeros_like(raw)
    for i in np.flatnonzero(raw):
        s, t = int(slots[i]), float(when[i])
        quiet = rearm > 0 and t - last_raw.get(s, -np.inf) >= rearm
        last_raw[s] = t
        if t - last_alert.get(s, -np.inf) >= gap or quiet:
            out[i] = True
            last_alert[s] = t
    return out


@pytest.mark.parametrize("rearm", [0.0, 30.0, 200.0])
def test_the_kernel_rearms_exactly_when_the_entity_was_quiet_that_long(rearm: float) -> None:
    rng = np.random.default_rng(4)
    n = 5000
    raw = rng.random(n) < 0.05
    slots = rng.integers(0, 4, n)
    when = np.cumsum(rng.exponential(2.0, n))
    expected = _reference(raw, slots, when, 500.0, rearm)
    alerts = raw.copy()
    kernel.cool_down(alerts, slots, when, np.full(4, -np.inf), np.full(4, -np.inf), 500.0, rearm)
    np.testing.assert_array_equal(alerts, expected)
    if rearm:  # some alerts come from re-arming inside what was a cooldown
        assert (alerts & ~_reference(raw, slots, when, 500.0, 0.0)).any()


def _config(rearm: str | None) -> dict[str, object]:
    return {
        "features": {"drop": ["machine_id", "timestamp", "value"]},
        "policy": {"kind": "fixed", "threshold": 0.999, "cooldown": "1d", "rearm": rearm},
        "entity_warmup": 0.0,
        "entities": [
            {
                "key": "machine_id",
                "time": "timestamp",
                "features": [{"kind": "zscore", "of": "value", "window": "1h"}, {"kind": "delta", "of": "value"}],
            }
        ],
    }


def _pump(hours: int, events: list[tuple[int, int, float]]) -> pl.DataFrame:
    """One pump read every minute, steady; ``events``: (start minute, length, swing): readings swinging by that
    much up and down (a glitch of one minute, or a fault that shakes the pump)."""
    rng = np.random.default_rng(2)
    n = hours * 60
    value = 20 + rng.normal(0, 0.3, n)
    for start, length, swing in events:
        value[start : start + length] += swing * (-1.0) ** np.arange(length)
    stamps = [datetime(2024, 5, 1) + timedelta(minutes=i) for i in range(n)]
    return pl.DataFrame({"machine_id": "p1", "timestamp": stamps, "value": value})


def test_a_false_alarm_no_longer_hides_the_fault_and_batches_decide_the_same() -> None:
    history = _pump(24, [])
    # a one-minute glitch at 02:00, then a fault from 02:40 for 20 minutes
    live = _pump(6, [(120, 1, 6.0), (160, 20, 8.0)]).with_columns(pl.col("timestamp") + timedelta(days=1))
    fault = live["timestamp"][160]
    plain = Model(config_from_dict(_config(None))).fit(history)
    rearmed = Model(config_from_dict(_config("10m"))).fit(history)
    hidden = plain.score(live, state=plain.new_state()).filter(pl.col("is_alert"))["timestamp"].to_list()
    whole = rearmed.score(live, state=rearmed.new_state())
    seen = whole.filter(pl.col("is_alert"))["timestamp"].to_list()
    assert hidden and min(hidden) < fault and not any(t >= fault for t in hidden)  # the glitch hides the fault
    assert fault in seen  # back to normal after the glitch: the fault alerts the minute it starts
    assert sum(t > fault for t in seen) == 0  # within the fault, the cooldown holds
    state, parts = rearmed.new_state(), []
    for i in range(0, live.height, 7):  # checkpoints fall inside the fault
        parts.append(rearmed.score(live[i : i + 7], state=state))
        assert state.entities is not None
        checkpoint = state.entities.to_bytes(0)  # a restart from the checkpoint between batches
        state = rearmed.new_state()
        assert state.entities is not None
        state.entities.load_bytes(0, checkpoint)
    assert_frame_equal(whole, pl.concat(parts), check_exact=True)


def test_rearm_needs_a_cooldown() -> None:
    with pytest.raises(ConfigError, match="policy.rearm ends a cooldown early"):
        config_from_dict({"policy": {"rearm": "10m"}})
