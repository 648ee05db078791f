"""Per-entity features: identical however the records are cut into batches, continued from the bundle's
end-of-history state, the stated rules for late events and idle entities, clean errors, and the fraud pack
seeing frauds the plain pipeline cannot."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from segscope.config import EntityConfig, SegscopeConfig, config_from_dict, load_config
from segscope.exceptions import ConfigError, DataError, SchemaError, SegscopeWarning
from segscope.features.entity import EntityFeatures
from segscope.metrics import evaluate_scores
from segscope.model import Model
from segscope.pipeline import as_fitted, fit_file, score_file
from segscope.testing.data import make_card_stream

PACK = Path(__file__).resolve().parents[1] / "configs" / "fraud.yaml"


@pytest.fixture(scope="module")
def cards() -> pl.DataFrame:
    return make_card_stream(300, days=20, seed=3)


@pytest.fixture(scope="module")
def pack() -> SegscopeConfig:
    return load_config(PACK)


def _spec(**features: object) -> EntityConfig:
    return EntityConfig.model_validate({"key": "card_id", "time": "ts", **features})


def _events(times: list[int], key: str = "a", amounts: list[float] | None = None) -> pl.DataFrame:
    start = datetime(2025, 1, 1)
    return pl.DataFrame(
        {
            "card_id": [key] * len(times),
            "ts": [start + timedelta(seconds=s) for s in times],
            "amount": amounts or [10.0] * len(times),
            "country": ["FR"] * len(times),
        }
    )


def test_model_scores_identically_in_one_batch_and_in_many(cards: pl.DataFrame, pack: SegscopeConfig) -> None:
    history, new = cards[:12_000], cards[12_000:16_000]
    model = Model(pack).fit(history)
    whole = model.score(new, state=model.new_state())
    state, parts, i = model.new_state(), [], 0
    for size in np.random.default_rng(0).integers(1, 700, 100):
        if i >= new.height:
            break
        parts.append(model.score(new[i : i + int(size)], state=state))
        i += int(size)
    assert_frame_equal(whole, pl.concat(parts), check_exact=True)
    names = list(model.entity_features)
    assert len(names) == 10 and all(n in whole.columns for n in names)
    assert model.scored_schema(new.schema) == whole.schema  # the entity features' columns, known without scoring


def test_bundle_continues_from_the_end_of_history(cards: pl.DataFrame, pack: SegscopeConfig, tmp_path: Path) -> None:
    """Scoring the next file with a saved bundle gives the features one pass over history + new gives."""
    history, new = cards[:10_000], cards[10_000:14_000]
    history.write_parquet(tmp_path / "history.parquet")
    new.write_csv(tmp_path / "new.csv")
    model = fit_file(tmp_path / "history.parquet", pack)
    model.save(tmp_path / "bundle")
    score_file(Model.load(tmp_path / "bundle"), tmp_path / "new.csv", tmp_path / "out.parquet", batch_size=777)
    scored = pl.read_parquet(tmp_path / "out.parquet")
    one_pass = EntityFeatures(pack.entities).fit_transform(pl.concat([history, new]))[10_000:]
    names = EntityFeatures(pack.entities).names
    assert_frame_equal(scored.select(names), one_pass.select(names), check_exact=True)
    assert Model.load(tmp_path / "bundle").has_entities


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 399), max_size=12, unique=True))
def test_any_cut_into_batches_gives_the_same_features(cuts: list[int]) -> None:
    rng = np.random.default_rng(7)
    frame = pl.DataFrame(
        {
            "card_id": rng.choice(["a", "b", "c", None], 400).tolist(),
            "ts": [datetime(2025, 1, 1) + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 4e5, 400))],
            "amount": rng.lognormal(3, 1, 400),
            "country": rng.choice(["FR", "DE", None], 400).tolist(),
            "merchant": rng.choice(["m1", "m2", "m3", "m4"], 400).tolist(),
        }
    )
    spec = load_config(PACK).entities
    whole = EntityFeatures(spec).fit_transform(frame)
    feats = EntityFeatures(spec).fit(frame[:0])
    state, bounds = feats.new_state(), [0, *sorted(cuts), 400]
    parts = [feats.transform(frame[a:b], state) for a, b in itertools.pairwise(bounds)]
    assert_frame_equal(whole, pl.concat(parts), check_exact=True)


def test_decayed_count_matches_a_sliding_count_at_a_steady_rate() -> None:
    frame = _events(list(range(0, 3600, 10)))  # one payment every 10 s for an hour
    out = EntityFeatures((_spec(features=[{"kind": "count", "window": "5m"}]),)).fit_transform(frame)
    # 30 payments in any 5 minutes; the decayed count settles at 1 / (1 - e^(-10/300)) = 30.5
    assert out["card_id_count_5m"][-1] == pytest.approx(30.5, abs=0.1)
    assert out["card_id_count_5m"][0] == 1.0


def test_late_events_count_at_the_entity_latest_time_and_are_counted() -> None:
    spec = _spec(allowed_lateness="60s", features=[{"kind": "since_last"}, {"kind": "count", "window": "1h"}])
    feats = EntityFeatures((spec,))
    out = feats.fit_transform(_events([0, 1000, 500, 2000, 100]))  # 500 and 100 arrive late
    since = out["card_id_since_last"].to_list()
    assert since == [None, 1000.0, 0.0, 1000.0, 0.0]  # a late event never moves the clock back
    assert feats.state_.late == 2


def test_idle_entities_start_again_after_the_ttl_and_are_freed() -> None:
    spec = _spec(ttl="1d", allowed_lateness="1h", features=[{"kind": "first_seen", "of": "country"}])
    feats = EntityFeatures((spec,))
    out = feats.fit_transform(_events([0, 60, 3 * 86400]))
    assert out["card_id_country_first_seen"].to_list() == [1.0, 0.0, 1.0]  # new again after the ttl
    keys = [f"k{i}" for i in range(4000)]
    old = pl.concat([_events([i], key=k) for i, k in enumerate(keys)])
    feats.fit_transform(pl.concat([old, _events([10 * 86400], key="late-comer")]))
    assert feats.state_.entities == 1  # 4,000 idle cards freed once the newest event is past ttl + lateness


def test_amount_against_the_card_habit() -> None:
    habit = [{"kind": kind, "of": "amount", "window": "30d"} for kind in ("zscore", "ratio")]
    spec = _spec(features=habit)
    amounts = [10.0, 11.0, 9.0, 10.5, 9.5, 400.0]
    out = EntityFeatures((spec,)).fit_transform(_events([0, 60, 120, 180, 240, 300], amounts=amounts))
    z, r = out["card_id_amount_zscore_30d"].to_list(), out["card_id_amount_ratio_30d"].to_list()
    assert z[0] is None and z[1] is None and z[-1] > 100 and abs(z[3]) < 2
    assert r[-1] == pytest.approx(40.0, rel=0.01)


def test_state_memory_per_entity_is_bounded(pack: SegscopeConfig) -> None:
    frame = make_card_stream(3000, days=5, seed=1)
    feats = EntityFeatures(pack.entities).fit(frame)
    per_entity = feats.state_.nbytes() / feats.state_.entities
    assert 100 < per_entity < 4000


@pytest.mark.parametrize(
    ("entities", "message"),
    [
        ([{"key": "card_id", "features": [{"kind": "zscore", "window": "1d"}]}], "needs 'of'"),
        ([{"key": "card_id", "time": "ts", "features": [{"kind": "count"}]}], "needs a 'window'"),
        ([{"key": "card_id", "time": "ts", "features": [{"kind": "count", "window": "5 min"}]}], "not a duration"),
        ([{"key": "card_id", "features": [{"kind": "count", "window": "5m"}]}], "has no 'time' column"),
        ([{"key": "card_id", "features": [{"kind": "velocity", "window": "5m"}]}], "velocity"),
    ],
)
def test_bad_entity_config_is_one_clear_line(entities: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict({"entities": entities})
    assert "\n" not in str(info.value)


def test_bad_expression_and_missing_key_are_one_clear_line(cards: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"nosuch\(\) is not an allowed function"):
        _spec(features=[{"kind": "mean", "of": "nosuch(amount)", "window": "1d", "name": "x"}])
    bad = _spec(features=[{"kind": "mean", "of": "lower(amount) * 2", "window": "1d", "name": "x"}])
    with pytest.raises(DataError, match="cannot be computed"):
        EntityFeatures((bad,)).fit_transform(cards[:100])
    with pytest.raises(DataError, match="key column 'card_id' is missing"):
        EntityFeatures((_spec(features=[{"kind": "since_last"}]),)).fit_transform(cards[:100].drop("card_id"))
    clash = _spec(features=[{"kind": "since_last", "name": "amount"}])
    with pytest.raises(ConfigError, match="clash"):
        EntityFeatures((clash,)).fit_transform(cards[:100])


def test_fraud_pack_sees_frauds_the_plain_pipeline_misses(pack: SegscopeConfig) -> None:
    stream = make_card_stream(800, days=30, seed=5)
    cut = stream.height // 2
    history, new = stream[:cut], stream[cut:]
    y = new["is_fraud"].to_numpy()
    with_pack = Model(pack).fit(history).score(new)
    plain_cfg = SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud", "card_id"))
    plain = Model(plain_cfg).fit(history).score(new)
    ours = evaluate_scores(y, with_pack["anomaly_score"].to_numpy())
    theirs = evaluate_scores(y, plain["anomaly_score"].to_numpy())
    assert ours["aucpr"] >= 3 * theirs["aucpr"]


def test_the_fitting_history_gets_its_fit_time_features_back(
    cards: pl.DataFrame, pack: SegscopeConfig, tmp_path: Path
) -> None:
    """Fine-tuning on the history file must not continue its entities from the state at its own end."""
    history, new = cards[:6000], cards[6000:8000]
    history.write_parquet(tmp_path / "history.parquet")
    new.write_parquet(tmp_path / "new.parquet")
    model = fit_file(tmp_path / "history.parquet", pack)
    # a scored file is told from the history by its size first: only one of the same size is hashed
    assert model.training["bytes"] == (tmp_path / "history.parquet").stat().st_size
    names = EntityFeatures(pack.entities).names
    again = as_fitted(model, tmp_path / "history.parquet", history)
    assert_frame_equal(again.select(names), EntityFeatures(pack.entities).fit_transform(history).select(names))
    assert as_fitted(model, tmp_path / "new.parquet", new) is new  # the model continues it from the end of history
    with pytest.warns(SegscopeWarning, match="missing"):  # its warm-up records see new cards, unlike the fit sample
        score_file(model, tmp_path / "history.parquet", tmp_path / "again.parquet", batch_size=1000)
    scored = pl.read_parquet(tmp_path / "again.parquet")
    assert_frame_equal(scored.select(names), again.select(names))  # scoring the history: its fit-time features


def test_cooldown_alerts_once_per_burst_and_the_same_in_any_batches(cards: pl.DataFrame, pack: SegscopeConfig) -> None:
    history, new = cards[:12_000], cards[12_000:16_000]
    cooled = pack.model_copy(update={"policy": pack.policy.model_copy(update={"cooldown": "1h"})})
    loud, quiet = Model(pack).fit(history), Model(cooled).fit(history)
    every = loud.score(new, state=loud.new_state())
    once = quiet.score(new, state=quiet.new_state())
    assert 0 < once["is_alert"].sum() < every["is_alert"].sum()
    assert once.filter("is_alert").filter(pl.col("ts").diff().over("card_id") < timedelta(hours=1)).height == 0
    assert (once["is_alert"] <= every["is_alert"]).all()  # the cooldown only withdraws alerts
    state = quiet.new_state()
    parts = pl.concat([quiet.score(new[i : i + 333], state=state) for i in range(0, new.height, 333)])
    assert_frame_equal(once, parts, check_exact=True)
    with pytest.raises(ConfigError, match="cooldown counts per entity"):
        config_from_dict({"policy": {"cooldown": "1h"}})


def test_text_files_keep_event_time_a_datetime_and_bad_times_are_one_clear_line(
    cards: pl.DataFrame, pack: SegscopeConfig, tmp_path: Path
) -> None:
    cards[:6000].write_csv(tmp_path / "history.csv")
    model = fit_file(tmp_path / "history.csv", pack)
    kinds = {c.name: c.kind for c in model.input_schema().columns}
    assert kinds["ts"] == "datetime"  # so a stream dead-letters a record whose time is not one
    bad = cards[6000:6100].with_columns(pl.col("ts").cast(pl.String))
    garbage = pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("not a time")).otherwise(pl.col("ts"))
    with pytest.raises(DataError, match="'ts' holds 'not a time' at row 0"):  # the first value: no format to infer
        model.score(bad.with_columns(garbage.alias("ts")))
    plain = Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(cards[:2000])
    with pytest.raises(SchemaError, match="row 0 holds 'not a time'"):  # the same parsing, shared
        plain.score(bad.with_columns(garbage.alias("ts")))


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns", "ms as text"])
def test_epoch_event_times_give_the_features_of_the_date_times(cards: pl.DataFrame, pack: SegscopeConfig, unit) -> None:
    """An entity's event time may be an epoch time (seconds, or the milliseconds many Kafka producers send, micro- or
    nanoseconds; numbers or text): each value's unit is read from its magnitude, and the features are those of
    the same instants as date-times."""
    scale = {"s": 1_000_000, "ms": 1000, "us": 1, "ns": 1}[unit.split()[0]]
    frame = cards[:4000].with_columns(pl.col("ts").dt.truncate("1s" if unit == "s" else "1ms"))
    epoch = frame["ts"].dt.epoch("us") // scale * (1000 if unit == "ns" else 1)
    numeric = frame.with_columns((epoch.cast(pl.String) if unit.endswith("text") else epoch).alias("ts"))
    expected = EntityFeatures(pack.entities).fit_transform(frame)
    got = EntityFeatures(pack.entities).fit_transform(numeric)
    names = EntityFeatures(pack.entities).names
    assert_frame_equal(got.select(names), expected.select(names), rel_tol=1e-6)
    assert got.select(names).null_count().sum_horizontal()[0] == expected.select(names).null_count().sum_horizontal()[0]
