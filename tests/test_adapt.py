"""adapt: each entity's detectors refitted on its own trailing window of entity-feature rows at event-time
boundaries, alerts gated by the refit's rank and kept out of the window; carried in the entity state, so that any
cut into batches and a checkpoint in the middle give the same decisions."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from segscope.config import AdaptConfig, DetectorConfig, SegscopeConfig, config_from_dict, load_config
from segscope.exceptions import BundleError, ConfigError
from segscope.features.entity import ladder_lines
from segscope.features.entity_state import EntityState
from segscope.model import Model, ScoringState
from segscope.report import load_report_data
from segscope.stream.checkpoint import EntityCheckpoints, Stamp
from segscope.unsupervised.adapt import ADAPT_MIN_ROWS, Refit, adapt_line, adapt_summary
from segscope.unsupervised.drift import adaptation_of

DAY = 86400.0
#: fewer trees than the pack's detectors: the same code, a quicker refit
DETECTORS = (DetectorConfig(name="iforest", params={"n_estimators": 20}), DetectorConfig(name="ecod"))


def _machines(days: int = 5, minutes: int = 10, seed: int = 3) -> pl.DataFrame:
    """Two machines: a daily cycle plus noise; b drifts up from day 2 (new levels every few hours) and spikes; a's
    sensor freezes for a few hours on day 4."""
    rng = np.random.default_rng(seed)
    n = days * 1440 // minutes
    stamps = [datetime(2024, 3, 1) + timedelta(minutes=minutes * i) for i in range(n)]
    rows = []
    for machine in ("a", "b"):
        value = 40 + 4 * np.sin(np.arange(n) * 2 * np.pi * minutes / 1440) + rng.normal(0, 0.6, n)
        if machine == "a" and days >= 4:
            hold = 3 * 1440 // minutes + 30
            value[hold : hold + 3 * 60 // minutes] = 41.5
        if machine == "b":
            start = 2 * 1440 // minutes
            value[start:] += np.linspace(0, 12, n - start)
            value[rng.choice(np.arange(start, n), 6, replace=False)] += 9
        rows.append(pl.DataFrame({"machine_id": machine, "timestamp": stamps, "value": value}))
    frame = pl.concat(rows).sort("timestamp", "machine_id", maintain_order=True)
    return frame.with_columns(pl.lit(0).alias("label"))


def _config(cooldown: str | None = "2h", **adapt: object) -> SegscopeConfig:
    pack = load_config("maintenance")
    settings = {"every": "1d", "window": "2d", "alert_at": 0.99, **adapt}
    policy = pack.policy.model_copy(update={"cooldown": cooldown})
    # a's sensor freezes for 3 hours: stuck alarms on any record hold here (the pack asks 5 hours); every new level
    # reaches the gate (the pack's min_deviation would keep back those of the drifting machine before it)
    unfiltered = {"min_hold": None, "min_deviation": None}
    features = tuple(f.model_copy(update=unfiltered) for f in pack.entities[0].features)
    entities = (pack.entities[0].model_copy(update={"features": features}),)
    update = {"detectors": DETECTORS, "policy": policy, "adapt": AdaptConfig(**settings), "entities": entities}
    return pack.model_copy(update=update)


@pytest.fixture(scope="module")
def fitted() -> tuple[Model, pl.DataFrame, pl.DataFrame, ScoringState]:
    frame = _machines()
    history, live = frame[:200], frame[200:]
    model = Model(_config()).fit(history)
    state = model.new_state()
    return model, live, model.score(live, state=state), state


def _windows(state: ScoringState) -> pl.DataFrame:
    assert state.entities is not None
    return state.entities.blocks[0].to_frame().select("key", pl.selectors.starts_with("adapt_")).sort("key")


@pytest.mark.parametrize("cuts", [(1,), (7, 300, 301, 900), tuple(range(97, 1300, 97)), (200, 1100)])
def test_any_cut_into_batches_gives_the_same_refits_and_decisions(
    fitted: tuple[Model, pl.DataFrame, pl.DataFrame, ScoringState], cuts: tuple[int, ...]
) -> None:
    model, live, whole, whole_state = fitted
    state = model.new_state()
    edges = [0, *cuts, live.height]
    parts = [model.score(live[a:b], state=state) for a, b in itertools.pairwise(edges)]
    assert_frame_equal(pl.concat(parts), whole)
    assert_frame_equal(_windows(state), _windows(whole_state))


@pytest.mark.parametrize("at", [150, 431, 1000])
def test_a_checkpoint_mid_file_restores_windows_and_refits_that_score_identically(
    fitted: tuple[Model, pl.DataFrame, pl.DataFrame, ScoringState], at: int
) -> None:
    model, live, whole, _ = fitted
    state = model.new_state()
    first = model.score(live[:at], state=state)
    assert state.entities is not None
    saved = state.entities.to_bytes(0)
    restored = model.new_state()  # a new process: the bundle's state, then the checkpoint
    assert restored.entities is not None
    restored.entities.load_bytes(0, saved)
    assert all(w.refit is None for w in restored.entities.blocks[0].trailing.values())  # made again on demand
    assert_frame_equal(pl.concat([first, model.score(live[at:], state=restored)]), whole)


def test_refits_gate_and_cooldown_match_a_by_hand_replay(
    fitted: tuple[Model, pl.DataFrame, pl.DataFrame, ScoringState],
) -> None:
    """Each machine replayed by hand: on entering a day, a refit on the rows of the two days before that neither
    alerted nor were new levels the cooldown alone would show (if 50 or more); a new level alerts where the refit
    ranks it >= 0.99 (a frozen sensor whatever its rank); at most once per 2 hours."""
    model, live, scored, state = fitted
    assert state.entities is not None
    names = list(model.entity_features)
    levels = model.describe_policy()["columns"]
    day = np.floor(live["timestamp"].cast(pl.Int64).to_numpy() / 1e6 / DAY).astype(int)
    withdrawn, held_shown = 0, False
    for machine in ("a", "b"):
        mine = (live["machine_id"] == machine).to_numpy()
        rows = scored.filter(pl.Series(mine))
        t = rows["timestamp"].cast(pl.Int64).to_numpy() / 1e6
        x = np.nan_to_num(rows.select(names).to_numpy(), nan=0.0)
        raw = (rows.select(levels).to_numpy() == 1).any(axis=1)
        stuck = (rows.select([c for c in levels if c.endswith("_stuck")]).to_numpy() == 1).any(axis=1)
        plain, last_plain = np.zeros(raw.size, bool), -np.inf  # the policy's alerts cooled down, no gate
        for i in np.flatnonzero(raw):
            if t[i] - last_plain >= 2 * 3600:
                plain[i], last_plain = True, t[i]
        d = day[mine]
        shown, last, refits, rows_of_last = np.zeros(d.size, bool), -np.inf, 0, 0
        for today in sorted(set(d.tolist())):
            taught = (d >= today - 2) & (d < today) & ~shown & ~plain
            gate = raw & (d == today)
            if taught.sum() >= ADAPT_MIN_ROWS:
                refit = Refit.fit(x[taught], DETECTORS, model.config.combine)
                rank = refit.rank(x[d == today])
                gate[d == today] &= (rank >= 0.99) | stuck[d == today]  # a frozen sensor alarms whatever
                refits, rows_of_last = refits + 1, int(taught.sum())
            withdrawn += int((raw & (d == today) & ~gate).sum())
            for i in np.flatnonzero(gate):
                if t[i] - last >= 2 * 3600:
                    shown[i], last = True, t[i]
        np.testing.assert_array_equal(rows["is_alert"].to_numpy(), shown)
        held_shown = held_shown or bool((shown & stuck).any())
        window = state.entities.blocks[0].trailing[machine]
        assert (window.refits, window.refit_rows, window.fitted) == (refits, rows_of_last, day.max())
    assert held_shown  # the frozen sensor alarmed through the gate
    assert withdrawn > 0  # the gate did withdraw new levels (held-back levels taught the refits they happen)


def test_the_window_is_a_bounded_deterministic_sample() -> None:
    frame = _machines(days=4, minutes=1)  # 1,440 rows per machine a day, 200 kept per window (100 per day)
    model = Model(_config(max_rows=200)).fit(frame[:400])
    live = frame[400:]
    states = [model.new_state(), model.new_state()]
    scored = [model.score(live, state=s) for s in states]
    assert_frame_equal(scored[0], scored[1])
    assert_frame_equal(_windows(states[0]), _windows(states[1]))
    for window in states[0].entities.blocks[0].trailing.values():  # type: ignore[union-attr]
        assert len(window.periods) <= 3  # the window's 2 days and the current one
        assert all(min(s, 100) == min(r.shape[0], s) for s, r in zip(window.seen, window.rows, strict=True))
        assert window.refit_rows <= 200 and max(window.seen) > 1000  # many offered, at most the cap kept
    summary = adapt_summary(states[0].entities.blocks, "1d")  # type: ignore[union-attr]
    assert summary["entities"] == 2 and summary["adapted_now"] == 2
    assert summary["last_adapted"] == "2024-03-04T00:00:00+00:00" and summary["last_rows"] == 200


def test_a_bundle_keeps_the_adapt_settings(
    fitted: tuple[Model, pl.DataFrame, pl.DataFrame, ScoringState], tmp_path: Path
) -> None:
    model, live, whole, _ = fitted
    loaded = Model.load(model.save(tmp_path / "bundle"))
    assert loaded.config.adapt == model.config.adapt
    assert_frame_equal(loaded.score(live, state=loaded.new_state()), whole)


@pytest.mark.parametrize(
    ("adapt", "entities", "message"),
    [
        ({"every": "1d", "window": "36h"}, True, "whole number of adapt.every"),
        ({"every": "1h", "window": "7d"}, True, "from 1 to 64"),
        ({"every": "0s", "window": "7d"}, True, "both be durations"),
        ({"every": 100, "window": "7d"}, True, "both be durations"),
        ({"every": "1d", "window": "7d", "alert_at": 1.5}, True, "alert_at"),
        ({"every": "1d", "window": "7d"}, False, "add an entities: block"),
        ({"every": "1d", "window": "7d"}, "recalibrated", "no policy.recalibrate"),
        ({"every": "1d", "window": "7d"}, "untimed", "'time' column"),
    ],
)
def test_a_bad_adapt_setting_is_one_line(adapt: dict[str, object], entities: object, message: str) -> None:
    data = load_config("maintenance").model_dump(mode="json", exclude={"kafka", "messages"})
    data["adapt"] = adapt
    if not entities:
        data["entities"], data["policy"] = [], {"kind": "contamination"}
    elif entities == "recalibrated":
        data["policy"] = {"kind": "contamination", "recalibrate": "7d"}
    elif entities == "untimed":
        data["entities"][0]["time"] = None
        data["entities"][0]["features"] = [{"kind": "new_level", "of": "sensor"}]
    with pytest.raises(ConfigError, match=message) as caught:
        config_from_dict(data)
    assert "\n" not in str(caught.value)


def test_counts_of_events_need_no_time_column() -> None:
    frame = _machines(days=3).drop("timestamp")
    cfg = _config(cooldown=None, every=100, window=200)
    spec = cfg.entities[0].model_copy(update={"time": None, "features": cfg.entities[0].features[:2]})
    model = Model(cfg.model_copy(update={"entities": (spec,)})).fit(frame[:100])
    state = model.new_state()
    whole = model.score(frame[100:], state=state)
    assert state.entities is not None
    assert {w.refits for w in state.entities.blocks[0].trailing.values()} == {(frame.height - 100) // 2 // 100}
    again = model.new_state()
    assert_frame_equal(
        pl.concat([model.score(frame[100:400], state=again), model.score(frame[400:], state=again)]), whole
    )


def test_a_damaged_window_in_a_state_file_is_refused(
    fitted: tuple[Model, pl.DataFrame, pl.DataFrame, ScoringState],
) -> None:
    model, _, _, state = fitted
    assert state.entities is not None
    frame = state.entities.blocks[0].to_frame()
    damaged = frame.with_columns(pl.col("adapt_kept").list.eval(pl.element() + 5))
    block = state.entities.blocks[0]
    fresh = model.new_state().entities
    assert isinstance(fresh, EntityState)
    with pytest.raises(BundleError, match="adapt window"):
        fresh.blocks[0].upsert(damaged)
    assert block.trailing  # the scored state itself untouched
    wrong = frame.with_columns(pl.col("adapt_period").cast(pl.Float64))
    buffer = io.BytesIO()
    wrong.with_columns(pl.lit(0.0).alias("newest"), pl.lit(0).alias("late")).write_ipc(buffer)
    with pytest.raises(BundleError, match="adapt_period"):
        fresh.load_bytes(0, buffer.getvalue())


def test_without_adapt_the_state_files_hold_no_window_columns() -> None:
    frame = _machines(days=3)
    model = Model(_config().model_copy(update={"adapt": None})).fit(frame[:200])
    state = model.new_state()
    model.score(frame[200:], state=state)
    assert state.entities is not None
    assert not [c for c in state.entities.blocks[0].to_frame().columns if c.startswith("adapt_")]


def test_inspect_score_and_the_report_say_when_it_last_adapted_and_on_how_many_rows(
    run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    frame = _machines()
    frame[:200].write_csv(tmp_path / "history.csv")
    frame[200:].write_csv(tmp_path / "live.csv")
    config = _config().model_dump(mode="json", exclude={"kafka", "messages"})
    (tmp_path / "adapt.yaml").write_text(yaml.safe_dump(config))
    bundle = tmp_path / "bundle"
    fit = run_cli("fit", tmp_path / "history.csv", "--config", tmp_path / "adapt.yaml", "--bundle", bundle)
    assert fit.code == 0, fit.err
    inspect = run_cli("inspect", bundle)
    shown = " ".join(inspect.out.split())  # Rich wraps at the terminal width
    assert "adapt every 1d, window 2d, alerts at rank >= 0.99: no refit yet (0 entities with a window)" in shown
    score = run_cli("score", tmp_path / "live.csv", "--bundle", bundle, "--out", tmp_path / "scored.csv")
    assert score.code == 0, score.err
    # 5 days from 2024-03-01 00:00, history to 16:40: each machine enters Mar 2 with 44 scored rows (under 50, no
    # refit), then Mar 3, 4 and 5 (3 refits)
    line = " ".join(score.err.split())
    assert "6 refits of 2 entities (2 refitted for their current period), the latest at 2024-03-05T00:00:00" in line
    model = Model.load(bundle)
    state = model.new_state()
    model.score(frame[200:], state=state)
    rows = max(w.refit_rows for w in state.entities.blocks[0].trailing.values())  # type: ignore[union-attr]
    assert f"on {rows:,} rows" in line
    report = load_report_data(model, tmp_path / "live.csv")
    assert report.adapted is not None and "6 refits of 2 entities" in report.adapted


def test_the_drift_guard_names_the_refits_among_the_adaptation() -> None:
    config = _config()
    assert adaptation_of(config.policy, config.adapt) == (
        "detectors refitted every 1d on the trailing 2d, new levels learnt from every reading, cooldown 2h"
    )
    assert adaptation_of(config.policy) == "new levels learnt from every reading, cooldown 2h"


def test_inspect_state_dir_reads_what_a_streams_checkpoints_hold(
    fitted: tuple[Model, pl.DataFrame, pl.DataFrame, ScoringState], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    model, live, _, whole = fitted
    model.save(tmp_path / "bundle")
    state = model.new_state()
    assert state.entities is not None
    checkpoints = EntityCheckpoints(tmp_path / "state", Stamp.of(model, "readings", "g"), full_every=2)
    for start, offset in itertools.pairwise([0, 300, 700, live.height]):  # a delta, a full state, a delta
        batch = live[start:offset]
        state.entities.partitions = np.zeros(batch.height, dtype=np.int32)
        model.score(batch, state=state)
        checkpoints.save(state.entities, {("readings", 0): offset})
    shown = run_cli("inspect", tmp_path / "bundle", "--state-dir", tmp_path / "state")
    assert shown.code == 0, shown.err
    expected = adapt_line(model.config, whole.entities)
    assert expected is not None and "6 refits" in expected
    assert f"2 entities at the newest checkpoints {expected}" in " ".join(shown.out.split())
    assert whole.entities is not None
    (ladder,) = ladder_lines(model.config.entities, whole.entities)  # b's drift climbed the pack's ladder
    assert ladder.startswith("machine_id_value_new_level: ladder [8, 30], entities past each count [")
    assert "past each count [0, 0]" not in ladder and ladder in " ".join(shown.out.split())
    missing = run_cli("inspect", tmp_path / "bundle", "--state-dir", tmp_path / "nothing")
    assert missing.code != 0 and "is not a folder" in missing.err
