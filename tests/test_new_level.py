"""Entity features of kind new_level and the new_level alert policy: a reading at a level its entity never had
(the fit range cut into equal levels) is flagged exactly then, whatever the batches, through a bundle and its
checkpoints; a stuck or flat sensor is a detection, not a fit error."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segscope.config import EntityConfig, SegscopeConfig, config_from_dict
from segscope.exceptions import BundleError, ConfigError
from segscope.features import levels
from segscope.features.entity import EntityFeatures
from segscope.model import Model
from segscope.testing.checks import check_entity_batches_through_checkpoints

LEVELS = 8


def _readings(n: int = 600, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "machine_id": rng.choice(["a", "b", None], n).tolist(),
            "timestamp": [datetime(2024, 1, 1) + timedelta(minutes=5 * i) for i in range(n)],
            "value": np.round(rng.normal(0, 1, n) * (1 + np.arange(n) / n), 3),
        }
    ).with_columns(pl.when(pl.Series(rng.random(n) < 0.05)).then(None).otherwise(pl.col("value")).alias("value"))


SPEC = (
    EntityConfig.model_validate(
        {"key": "machine_id", "time": "timestamp", "features": [{"kind": "new_level", "of": "value", "levels": LEVELS}]}
    ),
)


LADDER = (
    EntityConfig.model_validate(
        {
            "key": "machine_id",
            "time": "timestamp",
            "features": [{"kind": "new_level", "of": "value", "levels": LEVELS, "ladder": [3, 6]}],
        }
    ),
)


def _by_hand(
    frame: pl.DataFrame, start: float, step: float, ladder: tuple[int, int] | None = None, fit: int = 0
) -> list[float | None]:
    """1.0 where the row's level is one its machine never had before, 0.0 where it had, None without a value or key.
    With a ladder: after a machine's first ladder[0] new levels since row ``fit``, a new level is 1 only 2 or more
    levels from every level the machine had; after ladder[1], 3 or more; or 6 or more levels beyond the range it
    knew when it was last 1 (a creep)."""
    seen: dict[str, set[int]] = {}
    since_fit: dict[str, int] = {}
    alarmed: dict[str, tuple[int, int]] = {}  # the range known when the machine's feature was last 1
    out: list[float | None] = []
    for row, (key, value) in enumerate(zip(frame["machine_id"], frame["value"], strict=True)):
        if key is None or value is None:
            out.append(None)
            continue
        level = math.floor((value - start) / step)
        known = seen.setdefault(key, set())
        new = level not in known
        if new and ladder is not None and row >= fit and known:
            count = since_fit.get(key, 0)
            far = 1 + (count >= ladder[0]) + (count >= ladder[1])
            low, high = alarmed[key]
            new = min(abs(level - k) for k in known) >= far or not low - 6 < level < high + 6
            since_fit[key] = count + 1
        out.append(1.0 if new else 0.0)
        known.add(level)
        if new:
            alarmed[key] = (min(known), max(known))
    return out


def test_a_level_is_new_exactly_when_its_machine_never_had_it() -> None:
    frame = _readings()
    history, later = frame[:200], frame[200:]
    feats = EntityFeatures(SPEC).fit(history)
    values = history["value"].drop_nulls()
    grids = feats.grids_["machine_id_value_new_level"]
    assert set(grids) == {levels.ALL}  # fewer than MIN_OWN readings per machine: the grid of all of them
    start, step = grids[levels.ALL]
    assert start == pytest.approx(values.min()) and step == pytest.approx((values.max() - values.min()) / LEVELS)
    # later readings wander past the fit range: the same step goes on, each level beyond it new once
    scored = feats.transform(later, feats.new_state())["machine_id_value_new_level"].to_list()
    expected = _by_hand(frame, start, step)[200:]
    assert scored == expected
    assert 0 < sum(v == 1.0 for v in scored if v is not None) < 100


def test_a_ladder_quiets_new_levels_next_to_known_ones_once_a_machine_has_reached_enough() -> None:
    frame = _readings(900, seed=4)  # the spread grows: each machine keeps reaching levels past its fit range
    history, later = frame[:200], frame[200:]
    feats = EntityFeatures(LADDER).fit(history)
    start, step = feats.grids_["machine_id_value_new_level"][levels.ALL]
    state = feats.new_state()
    assert feats.levels_known(state)["machine_id_value_new_level"]["entities_past_each_count"] == [0, 0]  # at fit
    scored = feats.transform(later, state)["machine_id_value_new_level"].to_list()
    assert scored == _by_hand(frame, start, step, ladder=(3, 6), fit=200)[200:]
    plain = _by_hand(frame, start, step)[200:]
    since_fit = [sum(v == 1.0 for k, v in zip(later["machine_id"], plain, strict=True) if k == m) for m in "ab"]
    climbed = feats.levels_known(state)["machine_id_value_new_level"]  # what inspect shows
    assert climbed["ladder"] == [3, 6] and climbed["most_new_levels_since_fit"] == max(since_fit)
    assert climbed["entities_past_each_count"] == [sum(n >= 3 for n in since_fit), sum(n >= 6 for n in since_fit)]
    quieted = [i for i, (a, b) in enumerate(zip(scored, plain, strict=True)) if a == 0.0 and b == 1.0]
    assert quieted and sum(v == 1.0 for v in scored) > 6  # the ladder quiets some, and far levels still alarm
    # the fit history's levels count for nothing: every machine's first 3 new levels after it are 1
    firsts: dict[str, int] = {}
    for key, new, was in zip(later["machine_id"], scored, plain, strict=True):
        if key is not None and was == 1.0 and firsts.setdefault(key, 0) < 3:
            firsts[key] += 1
            assert new == 1.0


def test_under_a_ladder_a_creep_alarms_every_6_levels_and_a_jump_at_once() -> None:
    spec = (LADDER[0].model_copy(update={"features": (LADDER[0].features[0].model_copy(update={"ladder": (0,)}),)}),)
    values = [*range(9), *range(9, 31), -5]  # levels 0-8 at fit, then one level a step up to 30, then a drop
    frame = pl.DataFrame(
        {
            "machine_id": "m",
            "timestamp": [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(len(values))],
            "value": [float(v) for v in values],
        }
    )
    feats = EntityFeatures(spec).fit(frame[:9])
    assert feats.grids_["machine_id_value_new_level"][levels.ALL] == (0.0, 1.0)
    scored = feats.transform(frame[9:], feats.new_state())
    alarms = scored.filter(pl.col("machine_id_value_new_level") == 1.0)["value"].to_list()
    assert alarms == [14.0, 20.0, 26.0, -5.0]  # 6 levels past the range of the last alarm; 5 below the lowest known


def test_min_deviation_keeps_the_new_levels_that_jump_and_learns_those_reached_by_a_drift() -> None:
    zscores = [{"kind": "zscore", "of": "value", "window": w} for w in ("1h", "1d")]
    plain = {"kind": "new_level", "of": "value", "levels": LEVELS}
    base = {"key": "machine_id", "time": "timestamp"}
    # a slow climb out of the fit range (each step within its trailing hour's spread), then a jump down
    values = [float(v % 3) for v in range(300)] + [2 + i / 40 for i in range(200)] + [-30.0, 1.0, -60.0]
    frame = pl.DataFrame(
        {
            "machine_id": "m",
            "timestamp": [datetime(2024, 1, 1) + timedelta(minutes=5 * i) for i in range(len(values))],
            "value": values,
        }
    )
    scored = {}
    for least in (None, 2.0):
        spec = EntityConfig.model_validate({**base, "features": [{**plain, "min_deviation": least}, *zscores]})
        feats = EntityFeatures((spec,)).fit(frame[:300])
        scored[least] = feats.transform(frame[300:], feats.new_state())
    new_level, kept = (scored[k]["machine_id_value_new_level"].to_numpy() for k in (None, 2.0))
    deviation = np.nan_to_num(scored[2.0].select(pl.col("^machine_id_value_zscore_.*$").abs()).to_numpy(), nan=0.0).max(
        axis=1
    )
    # the zscores and the levels learnt are the same; a new level stays 1 exactly where it lies 2+ deviations out
    assert scored[None].drop("machine_id_value_new_level").equals(scored[2.0].drop("machine_id_value_new_level"))
    assert np.array_equal(kept, np.where((new_level == 1.0) & (deviation < 2.0), 0.0, new_level), equal_nan=True)
    assert (new_level[:200] == 1.0).sum() >= 5 and (kept[:200] == 1.0).sum() == 0  # the drift: learnt, no alarm
    assert kept[200] == 1.0 and kept[202] == 1.0  # the jumps down
    with pytest.raises(ConfigError, match="a zscore feature of the same of \\(value\\) in its block: add one"):
        config_from_dict({"entities": [{**base, "features": [{**plain, "min_deviation": 2}]}]})
    with pytest.raises(ConfigError, match="'min_deviation' belongs to features of kind 'new_level'"):
        config_from_dict({"entities": [{**base, "features": [{**zscores[0], "min_deviation": 2}]}]})


DEVIATION = (
    EntityConfig.model_validate(
        {
            "key": "machine_id",
            "time": "timestamp",
            "features": [
                {"kind": "new_level", "of": "value", "levels": LEVELS, "ladder": [3, 6], "min_deviation": 1.5},
                {"kind": "zscore", "of": "value", "window": "1h"},
            ],
        }
    ),
)


@pytest.mark.parametrize("spec", [SPEC, LADDER, DEVIATION], ids=["levels", "ladder", "min_deviation"])
@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(1, 399), max_size=10, unique=True))
def test_any_cut_into_batches_and_a_state_round_trip_give_the_same_levels(
    spec: tuple[EntityConfig, ...], cuts: list[int]
) -> None:
    frame = _readings(400, seed=1)
    feats = EntityFeatures(spec).fit(frame[:100])
    check_entity_batches_through_checkpoints(feats, frame[100:], [c - 100 for c in cuts])


@pytest.mark.parametrize(
    ("feature", "says"),
    [
        ({"kind": "zscore", "of": "value", "window": "1h", "ladder": [8]}, "'ladder' belongs to features of kind"),
        ({"kind": "new_level", "of": "value", "ladder": [30, 8]}, "a ladder's counts rise"),
        ({"kind": "new_level", "of": "value", "ladder": [5, 5]}, "a ladder's counts rise"),
        ({"kind": "new_level", "of": "value", "ladder": [-1]}, "0 or more: \\[-1\\] has a negative count"),
        ({"kind": "new_level", "of": "value", "ladder": [1, 2, 3]}, "at most 2"),
    ],
)
def test_a_ladder_that_cannot_work_is_one_clear_line_at_load(feature: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        config_from_dict({"entities": [{"key": "machine_id", "features": [feature]}]})


MIN = 300


def test_machines_with_enough_history_get_their_own_grid_and_new_machines_the_fleet_s() -> None:
    rng = np.random.default_rng(3)
    n = 900
    frame = pl.DataFrame(
        {
            "machine_id": ["hot", "cold"] * n + ["new"] * 200,
            "timestamp": [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(2 * n + 200)],
            "value": np.concatenate(
                [rng.normal(0, 1, 2 * n) + np.tile([500.0, 0.0], n) + np.linspace(0, 6, 2 * n), rng.normal(250, 5, 200)]
            ),
        }
    )
    history = frame[: 2 * MIN]
    feats = EntityFeatures(SPEC).fit(history)
    grids = feats.grids_["machine_id_value_new_level"]
    assert set(grids) == {levels.ALL, "hot", "cold"}
    hot = history.filter(pl.col("machine_id") == "hot")["value"]
    assert grids["hot"] == pytest.approx((hot.min(), (hot.max() - hot.min()) / LEVELS))
    scored = feats.transform(frame[2 * MIN :], feats.new_state())["machine_id_value_new_level"].to_list()
    truth: list[float | None] = [None] * frame.height
    for machine in ("hot", "cold", "new"):
        rows = frame.with_row_index().filter(pl.col("machine_id") == machine)
        start, step = grids.get(machine, grids[levels.ALL])
        for i, v in zip(rows["index"], _by_hand(rows, start, step), strict=True):
            truth[i] = v
    assert scored == truth[2 * MIN :]
    # the cold machine drifts by 4 more on its own grid (about 0.8 wide): new levels the fleet's 60-wide grid misses
    cold = [v for v, m in zip(scored, frame["machine_id"][2 * MIN :], strict=True) if m == "cold"]
    assert sum(v == 1.0 for v in cold) >= 3


def _pack() -> SegscopeConfig:
    return config_from_dict(
        {
            "features": {"drop": ["machine_id", "timestamp", "value"]},
            "policy": {"kind": "new_level", "cooldown": "1h"},
            "entity_warmup": 0.0,
            "entities": [
                {
                    "key": "machine_id",
                    "time": "timestamp",
                    "features": [
                        {"kind": "new_level", "of": "value"},
                        {"kind": "zscore", "of": "value", "window": "1h"},
                    ],
                }
            ],
        }
    )


def _machines(hours: int, stuck_at: int | None = None, flat: bool = False) -> pl.DataFrame:
    """Two machines read every minute, a daily-ish cycle plus noise; machine b sticks at a value it never read
    from ``stuck_at`` (a frozen sensor), or reads one flat value throughout."""
    rng = np.random.default_rng(5)
    n = hours * 60
    stamps = [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(n)]
    rows = []
    for machine in ("a", "b"):
        value = 50 + 5 * np.sin(np.arange(n) * 2 * np.pi / 600) + rng.normal(0, 0.5, n)
        if machine == "b" and flat:
            value = np.full(n, 20.0)
        if machine == "b" and stuck_at is not None:
            value[stuck_at:] = 80.0
        rows.append(pl.DataFrame({"machine_id": machine, "timestamp": stamps, "value": value}))
    return pl.concat(rows).sort("timestamp", "machine_id", maintain_order=True)


def test_a_stuck_sensor_alerts_once_and_a_steady_machine_stays_quiet(tmp_path: Path) -> None:
    frame = _machines(48, stuck_at=40 * 60)
    history, later = (
        frame.filter(pl.col("timestamp") < datetime(2024, 1, 2)),
        frame.filter(pl.col("timestamp") >= datetime(2024, 1, 2)),
    )
    model = Model(_pack()).fit(history)
    model.save(tmp_path / "bundle")
    loaded = Model.load(tmp_path / "bundle")
    entities = next(c for c in loaded.bundle_manifest()["components"] if c["role"] == "entities")
    learned = entities["new_levels"]["machine_id_value_new_level"]  # what inspect shows: the levels it knows
    assert learned["own_grids"] == 2 and 2 < learned["most_of_one_entity"] <= learned["levels_known"] <= 2 * 32 + 2
    scored = loaded.score(later, state=model.new_state())
    b = scored.filter(pl.col("machine_id") == "b")
    first_stuck = datetime(2024, 1, 1) + timedelta(minutes=40 * 60)
    alerts_b = b.filter(pl.col("is_alert"))["timestamp"].to_list()
    assert first_stuck in alerts_b  # the minute it sticks
    reasons = b.filter(pl.col("timestamp") == first_stuck)["reasons"][0]
    assert reasons[0]["feature"] == "machine_id_value_new_level"  # the alarm says why first
    assert len(reasons) <= 3 and sum(r["feature"] == "machine_id_value_new_level" for r in reasons) == 1
    assert len([t for t in alerts_b if t > first_stuck]) == 0  # stuck at one level: new once, then known
    a_alerts = scored.filter((pl.col("machine_id") == "a") & pl.col("is_alert")).height
    assert a_alerts <= 5  # the steady machine: its levels were all seen in the first day (edges may be new)


def test_a_flat_sensor_at_fit_is_no_error_and_any_move_off_it_is_new() -> None:
    frame = _machines(24, flat=True)  # machine b reads 20.0 throughout, a cycles around 50
    model = Model(_pack()).fit(frame[:1000])
    later = frame[1000:].with_columns(
        pl.when((pl.col("machine_id") == "b") & (pl.col("timestamp") == frame["timestamp"][1200]))
        .then(20.5)
        .otherwise(pl.col("value"))
        .alias("value")
    )
    scored = model.score(later, state=model.new_state())
    b = scored.filter(pl.col("machine_id") == "b")
    assert b.filter(pl.col("is_alert"))["value"].to_list() == [20.5]


@pytest.mark.parametrize(("low", "high"), [(5.0, 5.0), (0.0, 5e-324), (-1.7e308, 1.7e308)])
def test_a_grid_always_has_a_finite_positive_step(low: float, high: float) -> None:
    history = pl.DataFrame({"machine_id": ["a", "a"], "timestamp": [datetime(2024, 1, 1)] * 2, "value": [low, high]})
    feats = EntityFeatures(SPEC).fit(history)
    start, step = feats.grids_["machine_id_value_new_level"][levels.ALL]
    assert start == low and np.isfinite(step) and step > 0
    EntityFeatures.from_state(SPEC, list(feats.to_state().values()))  # and the bundle's copy loads


def test_policy_new_level_without_the_feature_and_a_tampered_grid_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy kind 'new_level' alerts on entity features of kind new_level"):
        config_from_dict(
            {"policy": {"kind": "new_level"}, "entities": [{"key": "m", "features": [{"kind": "count", "window": 10}]}]}
        )
    with pytest.raises(ConfigError, match="levels"):
        config_from_dict({"entities": [{"key": "m", "features": [{"kind": "new_level", "of": "v", "levels": 1}]}]})
    feats = EntityFeatures(SPEC).fit(_readings(100))
    files = feats.to_state()
    for bad in (
        b"[]",
        b'{"machine_id_value_new_level": [0, 1]}',
        b'{"machine_id_value_new_level": {"a": [0, 1]}}',
        json.dumps({"machine_id_value_new_level": {levels.ALL: [0, 0]}}).encode(),
        json.dumps({"other": {levels.ALL: [0, 1]}}).encode(),
        json.dumps({"machine_id_value_new_level": {levels.ALL: [1e308, 1]}}).replace("1e+308", "1e999").encode(),
        b"\xff",
    ):
        with pytest.raises(BundleError, match="levels.json does not hold a level grid"):
            EntityFeatures.from_state(SPEC, [*list(files.values())[:-1], bad])
    assert json.loads(files["entities/levels.json"])["machine_id_value_new_level"][levels.ALL][1] > 0


def test_a_file_fit_sets_the_grid_from_the_whole_history(tmp_path: Path) -> None:
    from segscope.pipeline import fit_file

    frame = _machines(30, stuck_at=25 * 60)
    frame.write_csv(tmp_path / "history.csv")
    model = fit_file(tmp_path / "history.csv", _pack())
    assert model.has_entities
    grids = model.entities_.grids_["machine_id_value_new_level"]  # white-box: the fitted grids
    for machine, grid in grids.items():
        values = frame["value"] if machine == levels.ALL else frame.filter(pl.col("machine_id") == machine)["value"]
        assert grid == pytest.approx((values.min(), (values.max() - values.min()) / 32))
    assert set(grids) == {levels.ALL, "a", "b"}


def test_a_machine_with_many_sensors_names_the_one_that_alarmed_first() -> None:
    """Twelve sensors, each with new_level and stuck (24 alarm features), as a pack meets a plant's file: the
    sensor that jumps to a level it never had is the first reason (and scoring stays as quick as for one)."""
    rng = np.random.default_rng(3)
    n, sensors = 600, [f"s{i:02d}" for i in range(12)]
    stamps = [datetime(2024, 1, 1) + timedelta(seconds=i) for i in range(n)]
    frame = pl.DataFrame({"timestamp": stamps, **{s: 10 + rng.normal(0, 1, n) for s in sensors}})
    frame = frame.with_columns(pl.when(pl.arange(0, n) == 500).then(99.0).otherwise(pl.col("s10")).alias("s10"))
    cfg = config_from_dict(
        {
            "features": {"drop": ["timestamp", "sensor"]},
            "policy": {"kind": "new_level"},
            "entity_warmup": 0.0,
            "entities": [
                {
                    "key": None,
                    "time": "timestamp",
                    "sensors": "numeric",
                    "features": [{"kind": "new_level", "of": "sensor"}, {"kind": "stuck", "of": "sensor"}],
                }
            ],
        }
    )
    model = Model(cfg).fit(frame.head(400))
    scored = model.score(frame.tail(200), state=model.new_state())
    jump = scored.row(100, named=True)
    assert jump["is_alert"] and jump["reasons"][0]["feature"] == "all_s10_new_level"
    for row in scored.iter_rows(named=True):  # an alert says its alarm first; a quiet row names none
        first = row["reasons"][0]
        assert row["is_alert"] == (first["feature"].endswith(("_new_level", "_stuck")) and first["value"] == "1")
