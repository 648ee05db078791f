"""Entity features of kind state: a machine's sensors read together against the state it learnt from its first
readings (squared Mahalanobis distance of its noisy sensors, smoothed; an alarm held while the smoothed distance
has stayed above its learnt limit for ``hold`` readings), the same in any batches and through checkpoints; the
maintenance pack alerts on it for as long as it lasts."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segscope.config import EntityConfig, config_from_dict, load_config
from segscope.exceptions import ConfigError, SegscopeWarning
from segscope.features.entity import EntityFeatures
from segscope.model import Model
from segscope.testing.checks import check_entity_batches_through_checkpoints

SENSORS = ("vibration", "current", "pressure", "temperature")
LEARN, SPAN, HOLD = 300, 10, 10
SPEC = (
    EntityConfig.model_validate(
        {
            "key": "machine_id",
            "time": "timestamp",
            "features": [{"kind": "state", "over": list(SENSORS), "learn": LEARN, "span": SPAN, "hold": HOLD}],
        }
    ),
)


def _machine(n: int, seed: int, fault: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Three correlated noisy sensors and a slowly warming temperature; in ``fault`` (rows), vibration and current
    rise together and pressure falls: each within its own usual range, but not together."""
    rng = np.random.default_rng(seed)
    load = rng.normal(0, 1, n)
    out = {
        "vibration": 2.0 + 0.5 * load + 0.2 * rng.normal(0, 1, n),
        "current": 10.0 + 1.0 * load + 0.3 * rng.normal(0, 1, n),
        "pressure": 5.0 + 0.4 * load + 0.2 * rng.normal(0, 1, n),
        "temperature": 40.0 + np.arange(n) * 0.02 + 0.01 * rng.normal(0, 1, n),
    }
    if fault is not None:
        a, b = fault
        out["vibration"][a:b] += 0.4
        out["current"][a:b] += 0.6
        out["pressure"][a:b] -= 0.6
    return out


def _fleet(n: int = 900, fault: tuple[int, int] | None = (600, 700), seed: int = 0) -> pl.DataFrame:
    """Machines a (a fault in ``fault``) and b (healthy), one reading a minute each, interleaved."""
    frames = []
    for k, machine in enumerate(("a", "b")):
        values = _machine(n, seed + k, fault if machine == "a" else None)
        stamps = [datetime(2024, 1, 1) + timedelta(minutes=i, seconds=k) for i in range(n)]
        frames.append(pl.DataFrame({"machine_id": machine, "timestamp": stamps, **values}))
    return pl.concat(frames).sort("timestamp")


def _by_hand(readings: np.ndarray, learn: int) -> np.ndarray:
    """The rule in NumPy for one machine's readings (rows x sensors): its state learnt from its first ``learn``
    readings, then 1 where the smoothed distance has stayed above the limit for HOLD readings (the learnt rows
    0). Also returns the smoothed distances and the limit."""
    train = readings[:learn]
    mean, std = train.mean(0), train.std(0)
    ratio = np.diff(train, axis=0).std(0) / (std + 1e-12) / np.sqrt(2)
    keep = (std > 0) & (ratio >= 0.5)
    scale = std[keep] + 1e-9
    inverse = np.linalg.pinv(np.atleast_2d(np.cov((train[:, keep] - mean[keep]) / scale, rowvar=False)))
    z = (readings[:, keep] - mean[keep]) / scale
    distance = np.einsum("ij,jk,ik->i", z, inverse, z)
    alpha, level, smooth = 2 / (SPAN + 1), distance[0], np.empty(len(distance))
    for i, d in enumerate(distance):
        level = alpha * d + (1 - alpha) * level
        smooth[i] = level
    limit = np.quantile(smooth[:learn], 0.99)
    above, alarm = 0, np.zeros(len(distance))
    for i, s in enumerate(smooth):
        above = above + 1 if s > limit else 0
        alarm[i] = 1.0 if i >= learn and above >= HOLD else 0.0
    return alarm, smooth, limit, keep


def test_the_state_alarms_exactly_as_the_rule_computed_by_hand() -> None:
    frame = _fleet()
    got = EntityFeatures(SPEC).fit_transform(frame)
    for machine in ("a", "b"):
        rows = got.filter(pl.col("machine_id") == machine)
        alarm, smooth, limit, keep = _by_hand(rows.select(SENSORS).to_numpy(), LEARN)
        assert keep.tolist() == [True, True, True, False]  # the warming temperature is a drift, not noise
        # decisions taken far from the limit (every smoothed distance of the last HOLD readings at least 1e-6
        # of it away) match exactly; a float's last bit may differ between CPUs
        near = np.abs(smooth - limit) < 1e-6 * limit
        clear = ~np.convolve(near, np.ones(HOLD), mode="full")[: len(near)].astype(bool)
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(rows["machine_id_state"].to_numpy()[clear], alarm[clear])
    a = got.filter(pl.col("machine_id") == "a")["machine_id_state"].to_numpy()
    assert a[:LEARN].sum() == 0 and a[620:700].mean() > 0.9 and a[720:].sum() == 0  # held through the fault only
    assert got.filter(pl.col("machine_id") == "b")["machine_id_state"].to_numpy()[LEARN:].mean() < 0.02


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 1199), max_size=8, unique=True))
def test_any_cut_into_batches_and_a_checkpoint_give_the_same_state(cuts: list[int]) -> None:
    frame = _fleet(n=700, fault=(450, 520))
    feats = EntityFeatures(SPEC).fit(frame[:400])  # 200 readings a machine: watched from the end of fit
    check_entity_batches_through_checkpoints(feats, frame[400:], [c - 400 for c in cuts])
    assert EntityFeatures(SPEC).fit(frame[:400]).transform(frame[400:])["machine_id_state"].sum() > 20  # it alarmed


def test_a_fit_history_shorter_than_learn_freezes_at_its_end_and_a_new_machine_learns_live() -> None:
    frame = _fleet(n=900, fault=(600, 700))
    fitted = frame.filter(pl.col("machine_id") == "b")[:200]  # machine b: 200 readings, fewer than LEARN
    feats = EntityFeatures(SPEC).fit(fitted)
    later = frame.filter(~pl.col("timestamp").is_in(fitted["timestamp"].implode()))
    out = feats.transform(later, feats.new_state())
    b = out.filter(pl.col("machine_id") == "b")["machine_id_state"].to_numpy()
    assert b.mean() < 0.02  # watched from its 200 fit readings on
    a = out.filter(pl.col("machine_id") == "a")
    alarm, *_ = _by_hand(a.select(SENSORS).to_numpy(), LEARN)  # machine a never seen at fit: learns live
    state = a["machine_id_state"].to_numpy()
    assert state[:LEARN].sum() == 0 and state[620:700].mean() > 0.9
    assert np.mean(state == alarm) > 0.99


def test_a_machine_with_fewer_than_two_noisy_sensors_is_not_watched() -> None:
    frame = _fleet(n=600, fault=(400, 500)).with_columns(
        pl.lit(3.0).alias("current"), (pl.col("timestamp").dt.epoch("s") / 1e6).alias("pressure")
    )  # current flat, pressure a ramp: only vibration stays
    out = EntityFeatures(SPEC).fit(frame[:700]).transform(frame[700:])
    assert out["machine_id_state"].to_list() == [0.0] * out.height


def _pack_fleet() -> pl.DataFrame:
    return _fleet(n=2000, fault=(1500, 1600)).with_columns(pl.col("machine_id").alias("machine"))


def test_the_maintenance_pack_alerts_through_a_fault_despite_its_cooldown() -> None:
    frame = _pack_fleet().drop("machine_id")
    config = load_config("maintenance", columns={"machine_id": "machine"})
    history = frame.filter(pl.col("timestamp") < datetime(2024, 1, 1, 20))  # 1,200 readings a machine
    model = Model(config.for_data(frame.schema)).fit(history)
    drift = model.drift_tracker()
    later = frame.filter(pl.col("timestamp") >= datetime(2024, 1, 1, 20))
    scored = model.score(later, state=model.new_state(), drift=drift)
    a = scored.filter(pl.col("machine") == "a").with_row_index()
    fault = a.filter(pl.col("timestamp").is_between(datetime(2024, 1, 2, 1, 20), datetime(2024, 1, 2, 2, 40)))
    assert fault["is_alert"].mean() > 0.8  # 80 minutes of fault, alerted throughout (cooldown 12h)
    held = scored.filter(pl.col("machine_state") == 1)
    assert held["is_alert"].all() and held.height >= 0.8 * fault.height
    assert set(held["reasons"].list.first().struct.field("feature")) == {"machine_state"}  # the alarm says why first
    assert drift is not None
    report = drift.report()  # a held alarm is a detection: neither drift nor an alert rate gone wrong
    assert report.held_rate == pytest.approx(held.height / scored.height)
    assert report.alert_rate == pytest.approx((scored["is_alert"].sum() - held.height) / scored.height)
    assert "machine_state" not in [c.name for c in report.columns] and "machine_state" not in (report.warning() or "")
    quiet = scored.filter(pl.col("machine") == "b")["is_alert"].sum()
    assert quiet <= 3  # the healthy machine: at most a new level now and then, one per 12 hours


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        ({"kind": "state"}, "reads two different columns or more: list them in 'over'"),
        ({"kind": "state", "over": ["a"]}, "reads two different columns or more"),
        ({"kind": "state", "over": ["a", "a"]}, "reads two different columns or more"),
        ({"kind": "state", "over": ["a", "b"], "window": "1h"}, "not window or levels"),
        ({"kind": "state", "over": ["a", "b"], "levels": 10}, "not window or levels"),
        ({"kind": "state", "of": "a", "over": ["a", "b"]}, "reads two different columns or more"),
        ({"kind": "zscore", "of": "a", "window": "1h", "over": ["a", "b"]}, "'over' belongs to features of kind"),
        ({"kind": "state", "of": "sensor"}, "needs sensors: in its block"),
        ({"kind": "state", "over": ["a", "b"], "learn": 100_000}, "learn"),
        ({"kind": "state", "over": [f"s{i}" for i in range(30)], "learn": 5000}, "5000 x 30 is over 100,000"),
    ],
)
def test_a_wrong_state_feature_is_one_clear_line(feature: dict[str, object], message: str) -> None:
    config = {"entities": [{"key": "m", "time": "t", "features": [feature]}]}
    with pytest.raises(ConfigError, match=message) as error:
        config_from_dict(config)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("damaged", [1e12, -5.0, float("nan"), float(LEARN)])
def test_a_damaged_learnt_count_relearns_and_never_writes_past_the_state(damaged: float) -> None:
    """A bundle's or checkpoint's state is data from outside: a learnt count out of range (here on a machine still
    learning, with 50 readings at the end of fit) must not index past its readings in the compiled kernel."""
    frame = _fleet(n=700, fault=(450, 520))
    feats = EntityFeatures(SPEC).fit(frame[:100])
    state = feats.new_state()
    block, offset = state.blocks[0], int(feats.plans[0].table[0, 3])
    assert block.acc[: block.size, offset].tolist() == [50.0, 50.0] and block.acc[: block.size, offset + 1].max() == 0
    block.acc[: block.size, offset] = damaged
    out = feats.transform(frame[100:], state)
    a = out.filter(pl.col("machine_id") == "a")["machine_id_state"].to_numpy()
    assert (
        a[:LEARN].sum() == 0 and a[415:470].mean() > 0.9
    )  # learnt again from its next LEARN readings (fault: 400-470)


def test_inspect_shows_what_each_machine_learnt(run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path, bundle = tmp_path / "fleet.parquet", tmp_path / "bundle"
    _pack_fleet().drop("machine_id").filter(pl.col("timestamp") < datetime(2024, 1, 1, 20)).write_parquet(path)
    fitted = run_cli("fit", path, "--config", "maintenance", "--map", "machine_id=machine", "--bundle", bundle)
    assert fitted.code == 0, fitted.err
    shown = run_cli("inspect", bundle)
    assert shown.code == 0, shown.err
    assert "machine_state: {" in shown.out and "'watching': 2" in " ".join(shown.out.split())
    entities = next(c for c in Model.load(bundle).bundle_manifest()["components"] if c["role"] == "entities")
    assert entities["machine_states"]["machine_state"] == {
        "watching": 2,
        "learning": 0,
        "too_few_noisy_sensors": 0,
        "sensors_used": {"vibration": 2, "current": 2, "pressure": 2, "temperature": 0},  # the warming one left out
    }


def test_a_state_over_one_sensor_and_one_that_can_never_alarm_are_told_at_fit() -> None:
    frame = _fleet(n=300, fault=None)
    one = {
        "key": "machine_id",
        "time": "timestamp",
        "sensors": ["vibration"],
        "features": [{"kind": "state", "of": "sensor"}],
    }
    with pytest.raises(ConfigError, match=r"finds only \['vibration'\] in the data") as error:
        Model(config_from_dict({"entities": [one]})).fit(frame)
    assert "\n" not in str(error.value)
    # a flat sensor and a warming one: neither is noise, so no machine can be watched
    quiet = frame.with_columns(pl.lit(3.0).alias("current"))
    never = {
        "key": "machine_id",
        "time": "timestamp",
        "features": [{"kind": "state", "over": ["current", "temperature"]}],
    }
    with pytest.warns(SegscopeWarning, match="'machine_id_state' watches no entity: none has two sensors"):
        Model(config_from_dict({"entities": [never]})).fit(quiet)


def test_the_pack_takes_a_machine_of_many_sensors_learning_from_fewer_readings() -> None:
    rng = np.random.default_rng(4)
    n, sensors = 240, [f"s{i:03d}" for i in range(120)]
    frame = pl.DataFrame(
        {
            "machine_id": ["m"] * n,
            "timestamp": [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(n)],
            **{s: rng.normal(0, 1, n) for s in sensors},
        }
    )
    model = Model(load_config("maintenance")).fit(frame)
    (state,) = [f for f in model.config.entities[0].features if f.kind == "state"]
    assert state.over == tuple(sensors) and state.learn == 100_000 // 120  # at most 100,000 numbers a machine


@pytest.mark.parametrize("glitch", [float("inf"), -float("inf"), 1e150, -1e300])
def test_one_wild_reading_is_not_a_fault_for_good(glitch: float) -> None:
    """A sensor glitch (an infinite or absurd value) must not poison what the machine learnt or its smoothed
    distance: the machine is watched as before once the glitch has passed."""
    frame = _fleet(n=900, fault=None)
    at = frame.with_row_index().filter((pl.col("machine_id") == "a") & (pl.col("index") > 1200))["index"][0]
    wild = frame.with_columns(
        pl.when(pl.int_range(pl.len()).is_in([100, at])).then(glitch).otherwise(pl.col("current")).alias("current")
    )  # one while it learns, one while it is watched
    a = EntityFeatures(SPEC).fit_transform(wild).filter(pl.col("machine_id") == "a")["machine_id_state"].to_numpy()
    assert a[LEARN:].mean() < 0.1 and a[-200:].sum() == 0
