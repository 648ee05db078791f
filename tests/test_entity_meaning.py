"""What an entity state means is its config and the level grids fitted with it: a bundle refitted on other history
(the same config) does not continue another fit's level codes, whether from a stream's checkpoints, a
``--state-dir`` set or a hot swap; a version that shares the fit (fine-tuned, renamed) carries on; stamps an earlier
release wrote are adopted once."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from segscope import registry as reg
from segscope._durations import duration_seconds
from segscope.config import EntityConfig, load_config
from segscope.features.entity import feature_name
from segscope.model import Model
from segscope.sources.base import Batch
from segscope.stream.checkpoint import CheckpointError, EntityCheckpoints, Stamp
from segscope.stream.parts import ModelWatcher
from tests.test_stream_adapts import _machines

TOPIC, GROUP = "pumps", "g1"
FIRST, SECOND = datetime(2024, 3, 2), datetime(2024, 3, 3)


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, Model, pl.DataFrame, Path]:
    """The maintenance pack fitted on the first day, and refitted (same config) on the first two; the third day's
    readings; a folder holding both bundles (``a``, ``b``)."""
    frame = _machines(3)
    config = load_config("maintenance").with_features(id_column="reading_id", drop=())
    a = Model(config).fit(frame.filter(pl.col("timestamp") < FIRST))
    b = Model(config).fit(frame.filter(pl.col("timestamp") < SECOND))
    root = tmp_path_factory.mktemp("fits")
    a.save(root / "a")
    b.save(root / "b")
    return a, b, frame.filter(pl.col("timestamp") >= SECOND).head(1200), root


def _earlier_checkpoint_digest(specs: Sequence[EntityConfig]) -> str:
    """What stream checkpoints were stamped with before the level grids counted (written out as it was)."""

    def seconds(value: str | int | None) -> float | None:
        return None if value is None else duration_seconds(value)

    described = [
        {
            "key": s.key, "time": s.time, "ttl": seconds(s.ttl), "allowed_lateness": seconds(s.allowed_lateness),
            "features": [
                {"name": feature_name(s, f), "kind": f.kind, "of": f.of, "window": seconds(f.window), "share": f.share}
                for f in s.features
            ],
        }
        for s in specs
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _earlier_set_digest(specs: Sequence[EntityConfig]) -> str:
    """What ``--state-dir`` sets were stamped with before the level grids counted: the settings alone."""
    settings = [spec.model_dump(mode="json", exclude_defaults=True) for spec in specs]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _stream(model: Model, root: Path, frame: pl.DataFrame, start: int, state: Any = None) -> pl.DataFrame:
    """What the stream loop does per batch of 200, partition 0 of TOPIC from offset ``start``; checkpoints under
    ``root`` (restored from the first batch)."""
    checkpoints = EntityCheckpoints(root, Stamp.of(model, TOPIC, GROUP))
    state = state if state is not None else model.new_state()
    out = []
    for i in range(0, frame.height, 200):
        part, first = frame[i : i + 200], start + i
        batch = Batch(part, origin=lambda j, first=first: (TOPIC, 0, first + j, None))
        batch.position = {(TOPIC, 0): first + part.height}
        checkpoints.prepare(batch, state.entities)
        out.append(model.score(part, state=state))
        checkpoints.save(state.entities, batch.position)
    return pl.concat(out)


def test_a_refit_on_other_history_means_another_state_and_a_renamed_version_the_same(fits) -> None:  # type: ignore[no-untyped-def]
    a, b, _, _ = fits
    assert a.config.entities == b.config.entities
    assert a.entities_.grids_ != b.entities_.grids_  # white-box: the second day moved the machines' ranges
    assert a.entity_meaning != b.entity_meaning
    assert a.with_version("renamed").entity_meaning == a.entity_meaning
    assert Stamp.of(a, TOPIC, GROUP).entities == a.entity_meaning


def test_a_stream_restarted_with_a_refit_refuses_the_checkpoints_of_the_old_fit(fits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b, live, _ = fits
    _stream(a, tmp_path, live[:600], 0)
    before = {p.name: p.read_bytes() for p in (tmp_path / f"{TOPIC}-0").iterdir()}
    with pytest.raises(CheckpointError) as caught:
        _stream(b, tmp_path, live[600:], 600)
    text = str(caught.value)
    assert "\n" not in text and "the entity config and fit of model version" in text and b.version in text, text
    assert {p.name: p.read_bytes() for p in (tmp_path / f"{TOPIC}-0").iterdir()} == before  # nothing deleted


def test_checkpoints_stamped_by_an_earlier_release_are_adopted_once_with_a_warning(  # type: ignore[no-untyped-def]
    fits, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The earlier stamp held part of the settings (not min_hold, ladder, levels ...) and no grids: whoever wrote
    it, the state is adopted (refusing it would cost every running stream its state on upgrade) with a warning."""
    a, _, live, _ = fits
    whole = a.score(live, state=a.new_state())
    _stream(a, tmp_path, live[:600], 0)
    file = tmp_path / f"{TOPIC}-0" / "stamp.json"
    stamp = json.loads(file.read_text())
    file.write_text(json.dumps({**stamp, "entities": _earlier_checkpoint_digest(a.config.entities)}))
    with caplog.at_level(logging.INFO, logger="segscope.stream"):
        restored = _stream(a, tmp_path, live[600:], 600)
    assert_frame_equal(restored, whole[600:], check_exact=True)  # the same process and CPU: exact
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "before stamps covered every entity setting" in warned[0], warned
    assert json.loads(file.read_text())["entities"] == a.entity_meaning  # stamped as this one's now
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="segscope.stream"):
        _stream(a, tmp_path, live[600:700], 600)  # restarted again: adopted once, so ours now
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    # a --state-dir set's earlier stamp is not a checkpoint's: refused
    file.write_text(json.dumps({**stamp, "entities": _earlier_set_digest(a.config.entities)}))
    with pytest.raises(CheckpointError):
        _stream(a, tmp_path, live[600:], 600)


@pytest.mark.parametrize(
    "planted",
    [{"entities": ["x"]}, {"entities": {"a": 1}}, {"entities": None}, {"format": True}, {"format": -5}, "nested"],
)
def test_a_planted_checkpoint_stamp_is_one_line(fits, tmp_path: Path, planted: object) -> None:  # type: ignore[no-untyped-def]
    a, _, live, _ = fits
    _stream(a, tmp_path, live[:200], 0)
    file = tmp_path / f"{TOPIC}-0" / "stamp.json"
    if planted == "nested":
        file.write_text('{"format": 1, "entities": ' + "[" * 3000 + "]" * 3000 + "}")
    else:
        file.write_text(json.dumps({**json.loads(file.read_text()), **planted}))  # type: ignore[dict-item]
    with pytest.raises(CheckpointError) as caught:
        _stream(a, tmp_path, live[200:400], 200)
    assert "\n" not in str(caught.value) and str(file) in str(caught.value), caught.value


def test_a_hot_swap_to_a_refit_restarts_the_entities_and_to_a_renamed_version_keeps_them(fits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b, live, root = fits
    registry = tmp_path / "reg"
    reg.ensure_registry(registry, seed_bundle=root / "a")
    renamed = a.with_version(f"{a.version[:15]}-renamed")
    for model in (b, renamed):
        model.save(registry / "versions" / model.version)
    watcher = ModelWatcher(registry, trusted=False)
    watcher.model.score(live[:300], state=watcher.state)
    kept = watcher.state.entities
    reg.set_current(registry, renamed.version, action="promote")
    assert watcher.refresh() and watcher.state.entities is kept
    reg.set_current(registry, b.version, action="promote")
    assert watcher.refresh() and watcher.state.entities is not kept
    fresh = b.new_state()
    assert_frame_equal(watcher.model.score(live[300:600], state=watcher.state), b.score(live[300:600], state=fresh))


def _score(run_cli: Callable[..., Any], root: Path, bundle: str, data: Path, out: str, state: Path) -> Any:
    return run_cli("score", data, "--bundle", root / bundle, "--out", data.parent / out, "--state-dir", state)


def test_a_state_folder_refuses_a_refit_and_adopts_an_earlier_release_s_stamp(  # type: ignore[no-untyped-def]
    fits, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    a, _, live, root = fits
    live[:600].write_csv(tmp_path / "first.csv")
    live[600:].write_csv(tmp_path / "second.csv")
    state = tmp_path / "state"
    assert _score(run_cli, root, "a", tmp_path / "first.csv", "1.csv", state).code == 0
    refused = _score(run_cli, root, "b", tmp_path / "second.csv", "2.csv", state)
    lines = refused.err.strip().splitlines()
    assert refused.code != 0 and len(lines) == 1 and "another entity config or fit" in lines[0], refused.err
    assert not (tmp_path / "2.csv").exists()
    for written_by in ("same", "other"):
        folder = tmp_path / f"state-{written_by}"
        (folder / "000001").mkdir(parents=True)
        for path in (state / "000001").iterdir():
            (folder / "000001" / path.name).write_bytes(path.read_bytes())
        file = folder / "000001" / "state.json"
        version = a.version if written_by == "same" else "20240101-000000-0ldf1t00"
        stamp = json.loads(file.read_text())
        file.write_text(json.dumps({**stamp, "entities": _earlier_set_digest(a.config.entities), "version": version}))
        done = _score(run_cli, root, "a", tmp_path / "second.csv", f"2-{written_by}.csv", folder)
        assert done.code == 0, done.err
        said = " ".join(done.err.split())
        assert ("before stamps covered the level grids" in said) == (written_by == "other"), said
        assert json.loads((folder / "000002" / "state.json").read_text())["entities"] == a.entity_meaning
    assert _score(run_cli, root, "a", tmp_path / "second.csv", "2.csv", state).code == 0
    assert (tmp_path / "2.csv").read_bytes() == (tmp_path / "2-same.csv").read_bytes()
    # what a stream's checkpoint stamped before is not a set's; a planted list is one line, not a traceback
    for planted in (_earlier_checkpoint_digest(a.config.entities), ["x"], {"a": 1}):
        file = state / "000002" / "state.json"
        file.write_text(json.dumps({**json.loads(file.read_text()), "entities": planted}))
        refused = _score(run_cli, root, "a", tmp_path / "second.csv", "3.csv", state)
        lines = refused.err.strip().splitlines()
        assert refused.code != 0 and len(lines) == 1 and "Traceback" not in refused.err, refused.err
