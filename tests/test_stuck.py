"""Entity features of kind stuck: 1 at the reading where a sensor has held one value longer than it ever held any
before (a frozen sensor at a usual value), once per hold, the same in any batches; the maintenance pack alarms on
it."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from segscope.config import EntityConfig, config_from_dict, load_config
from segscope.exceptions import ConfigError
from segscope.features.entity import EntityFeatures
from segscope.model import Model

SPEC = (
    EntityConfig.model_validate(
        {"key": "machine_id", "time": "timestamp", "features": [{"kind": "stuck", "of": "value"}]}
    ),
)


def _quantised(n: int, seed: int) -> pl.DataFrame:
    """Two machines whose readings repeat now and then (a sensor with a coarse resolution), some missing."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(0, 1, n), 0)
    values[rng.random(n) < 0.03] = np.nan
    return pl.DataFrame(
        {
            "machine_id": rng.choice(["a", "b"], n).tolist(),
            "timestamp": [datetime(2024, 1, 1) + timedelta(seconds=float(s)) for s in np.cumsum(rng.uniform(1, 60, n))],
            "value": values,
        }
    ).with_columns(pl.col("value").fill_nan(None))


def _by_hand(frame: pl.DataFrame, min_hold: float = 0.0) -> list[float | None]:
    held: dict[str, tuple[float, float]] = {}  # machine -> (value, since)
    longest: dict[str, float] = {}
    alarmed: set[str] = set()  # machines whose current hold has alarmed
    last: dict[str, float] = {}
    out: list[float | None] = []
    for key, when, value in zip(frame["machine_id"], frame["timestamp"], frame["value"], strict=True):
        t = when.timestamp()
        if value is None:
            out.append(None)
        elif key not in held or held[key][0] != value:
            if key in held:
                longest[key] = max(longest.get(key, 0.0), last[key] - held[key][1])
            held[key] = (value, t)
            alarmed.discard(key)
            out.append(0.0)
        elif key not in alarmed and t - held[key][1] > max(longest.get(key, 0.0), min_hold):
            alarmed.add(key)
            out.append(1.0)
        else:
            out.append(0.0)
        last[key] = t
    return out


def test_stuck_is_one_exactly_where_a_hold_becomes_the_longest_yet() -> None:
    frame = _quantised(3000, seed=1)
    got = EntityFeatures(SPEC).fit_transform(frame)["machine_id_value_stuck"].to_list()
    assert got == _by_hand(frame)
    assert 0 < sum(v == 1.0 for v in got[1000:]) < 100  # rare once each machine has held values for a while
    # min_hold: a hold must also last that long (here 2 minutes of event time) before it alarms
    spec = SPEC[0].model_copy(update={"features": (SPEC[0].features[0].model_copy(update={"min_hold": "2m"}),)})
    held = EntityFeatures((spec,)).fit_transform(frame)["machine_id_value_stuck"].to_list()
    assert held == _by_hand(frame, min_hold=120.0)
    assert 0 < sum(v == 1.0 for v in held) < sum(v == 1.0 for v in got)


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 599), max_size=10, unique=True))
def test_any_cut_into_batches_gives_the_same_holds(cuts: list[int]) -> None:
    frame = _quantised(600, seed=2)
    feats = EntityFeatures(SPEC).fit(frame[:0])
    whole = feats.transform(frame, feats.new_state())
    state, bounds = feats.new_state(), [0, *sorted(cuts), 600]
    parts = [feats.transform(frame[a:b], state) for a, b in itertools.pairwise(bounds)]
    assert_frame_equal(whole, pl.concat(parts), check_exact=True)


def test_the_maintenance_pack_alarms_on_a_sensor_frozen_at_a_usual_value() -> None:
    rng = np.random.default_rng(8)
    n = 4 * 1440
    value = 60 + 3 * np.sin(np.arange(n) * 2 * np.pi / 1440) + rng.normal(0, 0.4, n)
    frozen_at = 3 * 1440
    value[frozen_at : frozen_at + 360] = value[frozen_at - 1]  # six hours frozen at its last reading
    frame = pl.DataFrame(
        {
            "machine_id": "pump",
            "timestamp": [datetime(2024, 2, 1) + timedelta(minutes=i) for i in range(n)],
            "temperature": np.round(value, 2),
        }
    )
    model = Model(load_config("maintenance")).fit(frame[:1440])
    scored = model.score(frame[1440:], state=model.new_state())
    alerts = scored.filter(pl.col("is_alert"))["timestamp"].to_list()
    start = frame["timestamp"][frozen_at]
    frozen = [t for t in alerts if start <= t < start + timedelta(hours=6)]
    # the pack's min_hold: 5 hours (its hold starts a minute before, at the reading it repeats)
    assert frozen and start + timedelta(hours=5) - timedelta(minutes=1) < frozen[0] <= start + timedelta(hours=5)
    assert len(alerts) <= 6  # the rest: a few new levels at most


@pytest.mark.parametrize(
    ("entity", "says"),
    [
        ({"time": "timestamp", "features": [{"kind": "zscore", "of": "v", "window": "1h", "min_hold": "4h"}]},
         "'min_hold' belongs to features of kind 'stuck'"),
        ({"time": "timestamp", "features": [{"kind": "stuck", "of": "v", "min_hold": "0s"}]}, "longer than zero"),
        ({"features": [{"kind": "stuck", "of": "v", "min_hold": "4h"}]}, "min_hold '4h' is a duration but the entity"),
    ],
)  # fmt: skip
def test_a_min_hold_that_cannot_work_is_one_clear_line_at_load(entity: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        config_from_dict({"entities": [{"key": "machine_id", **entity}]})
