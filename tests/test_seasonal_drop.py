"""Entity features of kind seasonal_drop: 1 where a reading, smoothed, lies far below its hour of day's usual level
in a series with a daily cycle (a machine idle when it always runs, a service at a third of its usual traffic),
exactly as the rule computed by hand, the same in any batches and through checkpoints; the maintenance pack alarms
on it."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segscope.config import EntityConfig, config_from_dict, load_config
from segscope.exceptions import ConfigError
from segscope.features.entity import EntityFeatures
from segscope.model import Model
from segscope.testing.checks import check_entity_batches_through_checkpoints

SPEC = (
    EntityConfig.model_validate(
        {"key": "machine_id", "time": "timestamp", "features": [{"kind": "seasonal_drop", "of": "value"}]}
    ),
)
DROP = (15 * 24 + 10, 15 * 24 + 15)  # day 15, 10:00 to 15:00: the machine idles when it always runs


def _cycle(days: int = 20, seed: int = 0, cycle: float = 10.0, drop: tuple[int, int] | None = DROP) -> pl.DataFrame:
    """Machines a (its drop in ``drop``) and b, one reading every 15 minutes: a daily cycle of ``cycle`` around
    50 plus noise. The drop takes a's readings to the day's low, a level they reach every night."""
    rng = np.random.default_rng(seed)
    n = days * 96
    frames = []
    for machine in ("a", "b"):
        stamps = [datetime(2024, 1, 1) + timedelta(minutes=15 * i) for i in range(n)]
        hours = np.array([s.hour + s.minute / 60 for s in stamps])
        value = 50 + cycle * np.sin((hours - 6) / 24 * 2 * np.pi) + rng.normal(0, 1, n)
        if machine == "a" and drop is not None:
            idle = (np.arange(n) // 4 >= drop[0]) & (np.arange(n) // 4 < drop[1])
            value[idle] = 50 - cycle + rng.normal(0, 1, int(idle.sum()))
        frames.append(pl.DataFrame({"machine_id": machine, "timestamp": stamps, "value": value}).with_row_index())
    return pl.concat(frames).sort("timestamp", "machine_id").drop("index")


def _by_hand(values: np.ndarray, stamps: list[datetime], deviations: float = 3.0, span: int = 6) -> np.ndarray:
    """The rule in plain Python for one machine's readings, and the margin of each decision (how far the
    smoothed deviation and the cycle's share of the variance are from their limits)."""
    level, spread, count = np.zeros(24), np.zeros(24), np.zeros(24)
    series = [0.0, 0.0, 0.0]
    smooth, out, margin = math.nan, np.zeros(len(values)), np.full(len(values), np.inf)
    alpha = 2 / (span + 1)
    for i, (x, when) in enumerate(zip(values, stamps, strict=True)):
        h = when.hour
        if count[h] >= 3 and series[2] >= 2:
            z = (x - level[h]) / (math.sqrt(spread[h]) + 1e-9 * (1 + abs(level[h])))
            smooth = z if math.isnan(smooth) else alpha * z + (1 - alpha) * smooth
            share = spread[count >= 3].mean() / series[1] if series[1] > 0 else math.inf
            out[i] = 1.0 if share <= 0.5 and smooth <= -deviations else 0.0
            margin[i] = min(abs(smooth + deviations), abs(share - 0.5))
        for holder, weight in (((level, spread, count), 0.1), (series, 0.01)):
            if holder is series:
                if series[2] == 0:
                    series[0], series[1], smooth = x, 0.0, math.nan
                else:
                    d = x - series[0]
                    series[0] += weight * d
                    series[1] = (1 - weight) * (series[1] + weight * d * d)
                series[2] += 1
            else:
                if count[h] == 0:
                    level[h], spread[h] = x, 0.0
                else:
                    d = x - level[h]
                    level[h] += weight * d
                    spread[h] = (1 - weight) * (spread[h] + weight * d * d)
                count[h] += 1
    return np.stack([out, margin])


def test_a_drop_below_the_hour_s_usual_level_is_one_exactly_as_by_hand() -> None:
    frame = _cycle()
    got = EntityFeatures(SPEC).fit_transform(frame)
    for machine in ("a", "b"):
        rows = got.filter(pl.col("machine_id") == machine)
        expected, margin = _by_hand(rows["value"].to_numpy(), rows["timestamp"].to_list())
        clear = margin > 1e-6  # a float's last bit may differ between CPUs: only decisions taken clear of a limit
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(rows["machine_id_value_seasonal_drop"].to_numpy()[clear], expected[clear])
    a = got.filter(pl.col("machine_id") == "a")["machine_id_value_seasonal_drop"].to_numpy()
    idle = slice(DROP[0] * 4 + 4, DROP[1] * 4)  # after its first hour, smoothed
    assert a[idle].mean() > 0.8 and a[: DROP[0] * 4].sum() + a[DROP[1] * 4 + 8 :].sum() <= 3
    assert got.filter(pl.col("machine_id") == "b")["machine_id_value_seasonal_drop"].sum() <= 3


def test_a_series_without_a_daily_cycle_has_no_hour_to_drop_below() -> None:
    """Noise around one level has no usual level per hour: its hours' spreads are the series' own, so however low
    a reading of noise falls below its hour's mean, nothing drops (while the same idle hours in a cycling series
    do)."""
    flat = EntityFeatures(SPEC).fit_transform(_cycle(days=40, cycle=0.0, drop=None, seed=3))
    assert flat["machine_id_value_seasonal_drop"].sum() == 0
    cycling = EntityFeatures(SPEC).fit_transform(_cycle(cycle=10.0))
    assert cycling["machine_id_value_seasonal_drop"].sum() > 10


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 3839), max_size=8, unique=True))
def test_any_cut_into_batches_and_a_checkpoint_give_the_same_drops(cuts: list[int]) -> None:
    frame = _cycle()
    feats = EntityFeatures(SPEC).fit(frame[:1000])
    check_entity_batches_through_checkpoints(feats, frame[1000:], [c - 1000 for c in cuts])
    assert EntityFeatures(SPEC).fit(frame[:1000]).transform(frame[1000:])["machine_id_value_seasonal_drop"].sum() > 10


def test_the_maintenance_pack_alarms_on_the_drop_and_says_why() -> None:
    frame = _cycle()
    history = frame.filter(pl.col("timestamp") < datetime(2024, 1, 8))
    model = Model(load_config("maintenance")).fit(history)
    scored = model.score(frame.filter(pl.col("timestamp") >= datetime(2024, 1, 8)), state=model.new_state())
    alerts = scored.filter(pl.col("is_alert") & (pl.col("machine_id") == "a"))
    start = datetime(2024, 1, 16, 10)
    during = alerts.filter(pl.col("timestamp").is_between(start, start + timedelta(hours=5)))
    # the 5-hour drop alarms at its start and once more when the pack's 4-hour cooldown is over (it holds the rest)
    assert during.height == 2 and during["timestamp"][0] < start + timedelta(hours=1)
    assert during["timestamp"][1] - during["timestamp"][0] >= timedelta(hours=4)
    assert during["reasons"][0][0]["feature"] == "machine_id_value_seasonal_drop"
    assert scored.filter(pl.col("machine_id") == "b")["is_alert"].sum() <= 2


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"key": "m", "features": [{"kind": "seasonal_drop", "of": "v"}]}, "by hour of day: set the entity's time"),
        ({"key": "m", "time": "t", "features": [{"kind": "seasonal_drop"}]}, "needs 'of'"),
        ({"key": "m", "time": "t", "features": [{"kind": "seasonal_drop", "of": "v", "window": "1h"}]}, "not window"),
        ({"key": "m", "time": "t", "features": [{"kind": "seasonal_drop", "of": "v", "deviations": 0}]}, "deviations"),
    ],
)
def test_a_wrong_seasonal_drop_is_one_clear_line(block: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        config_from_dict({"entities": [block]})
    assert "\n" not in str(error.value)


def test_an_event_time_without_an_hour_is_no_drop_and_no_crash() -> None:
    """Event times come from the data: an infinite or huge epoch time has no hour of day to index."""
    frame = _cycle(days=3).with_columns(pl.col("timestamp").dt.epoch("s").cast(pl.Float64))
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 200).then(float("inf"))
        .when(pl.int_range(pl.len()) == 201).then(-float("inf"))
        .when(pl.int_range(pl.len()) == 202).then(1e300)
        .otherwise(pl.col("timestamp")).alias("timestamp")
    )  # fmt: skip
    got = EntityFeatures(SPEC).fit_transform(frame)["machine_id_value_seasonal_drop"]
    assert got.len() == frame.height and set(got.drop_nulls().to_list()) <= {0.0, 1.0}


@pytest.mark.parametrize("glitch", [float("inf"), -float("inf"), float("nan")])
def test_one_wild_reading_leaves_the_hours_as_they_were(glitch: float) -> None:
    frame = _cycle()
    wild = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 500).then(glitch).otherwise(pl.col("value")).alias("value")
    )
    clean = EntityFeatures(SPEC).fit_transform(frame)["machine_id_value_seasonal_drop"]
    got = EntityFeatures(SPEC).fit_transform(wild)["machine_id_value_seasonal_drop"]
    assert got[500] == 0.0 and (got[501:] == clean[501:]).all()  # the glitch skipped, nothing after it changed
