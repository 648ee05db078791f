"""Issue 25, stream and registry: damaged or foreign entity checkpoints under --state-dir, a --state-dir that is a
file, promotions of an empty registry or a damaged version, symlinks in a registry's versions/, and a watching
stream whose registry's new CURRENT does not load."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from segscope import BundleError, Model
from segscope import bundle as bundle_format
from segscope import registry as reg
from segscope.config import load_config
from segscope.exceptions import SegscopeError
from segscope.features.entity import EntityFeatures
from segscope.features.entity_meaning import entity_meaning
from segscope.features.entity_state import Block, EntityState
from segscope.sources.base import Batch
from segscope.stream.checkpoint import CheckpointError, EntityCheckpoints, Stamp
from segscope.stream.parts import ModelWatcher
from segscope.testing.data import make_card_stream
from tests.fuzz_bundle import arrow_bomb
from tests.kafka_helpers import (
    committed_offsets,
    consume_all,
    count,
    create_topic,
    produce,
    records,
    start_stream,
    terminate,
    wait_until,
)

PACK = Path(__file__).resolve().parents[1] / "configs" / "fraud.yaml"
TOPIC, GROUP = "cards", "g1"


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, pl.DataFrame, Path]:
    """A model with per-entity features, its live records and its bundle."""
    events = make_card_stream(150, days=12, seed=31)
    cut = int(events.height * 0.6)
    model = Model(load_config(PACK)).fit(events[:cut])
    bundle = tmp_path_factory.mktemp("entities") / "bundle"
    model.save(bundle)
    return model, events[cut:].drop("is_fraud").head(600), bundle


def _stamp(model: Model, *, topic: str = TOPIC, group: str = GROUP) -> Stamp:
    return Stamp.of(model, topic, group)


def _stream(
    model: Model, checkpoints: EntityCheckpoints, state, frame: pl.DataFrame, start: int, size: int = 50
) -> pl.DataFrame:  # type: ignore[no-untyped-def]
    """What the stream loop does per batch, for partition 0 of TOPIC from offset ``start``."""
    out = []
    for i in range(0, frame.height, size):
        part = frame[i : i + size]
        first = start + i
        batch = Batch(part, origin=lambda j, first=first: (TOPIC, 0, first + j, None))
        batch.position = {(TOPIC, 0): first + part.height}
        checkpoints.prepare(batch, state.entities)
        out.append(model.score(part, state=state))
        checkpoints.save(state.entities, batch.position)
        checkpoints.prune(batch.position)
    return pl.concat(out)


def _written(model: Model, live: pl.DataFrame, root: Path, *, full_every: int = 50) -> int:
    """Checkpoints of the first half of ``live`` under ``root``; returns the offset the second half starts at."""
    half = live.height // 2
    _stream(model, EntityCheckpoints(root, _stamp(model), full_every=full_every), model.new_state(), live[:half], 0)
    return half


def _restore(model: Model, root: Path, frame: pl.DataFrame, offset: int, stamp: Stamp | None = None):  # type: ignore[no-untyped-def]
    """A new process restoring partition 0 at ``offset`` (from its first batch)."""
    checkpoints = EntityCheckpoints(root, stamp or _stamp(model))
    return _stream(model, checkpoints, model.new_state(), frame, offset)


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.arrow"))


def _one_line(exc: BaseException, *fragments: str) -> str:
    text = str(exc)
    assert "\n" not in text and isinstance(exc, SegscopeError), text
    for fragment in fragments:
        assert fragment in text, text
    return text


def _one_line_error(result, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ") and "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _other_entity_config(model: Model):  # type: ignore[no-untyped-def]
    """The same config with one window changed: the same state layout, different meaning."""
    spec = model.config.entities[0]
    first = spec.features[0].model_copy(update={"window": "10m"})
    return (spec.model_copy(update={"features": (first, *spec.features[1:])}),)


def _meaning_of(specs, model: Model) -> str:  # type: ignore[no-untyped-def]
    """What ``specs`` would mean with ``model``'s fit."""
    features = EntityFeatures(specs)
    features.grids_ = model.entities_.grids_  # type: ignore[union-attr]  # white-box: the fit's grids
    return entity_meaning(features)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_a_restored_checkpoint_continues_exactly(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, live, _ = fitted
    whole = model.score(live, state=model.new_state())
    offset = _written(model, live, tmp_path, full_every=3)  # full states and deltas
    restored = _restore(model, tmp_path, live[offset:], offset)
    assert_frame_equal(restored, whole[offset:], check_exact=True)  # same process, same CPU: exact
    stamp = json.loads((tmp_path / f"{TOPIC}-0" / "stamp.json").read_text())
    assert stamp["topic"] == TOPIC and stamp["group"] == GROUP and stamp["partition"] == 0
    assert stamp["entities"] == model.entity_meaning and stamp["format"] == 1


@pytest.mark.parametrize(
    "damage", ["truncated", "garbage", "empty", "no columns", "beyond the blocks", "acc width", "fifo", "bomb"]
)
def test_a_damaged_checkpoint_is_one_error_naming_the_file_and_the_fix(  # type: ignore[no-untyped-def]
    fitted, tmp_path: Path, damage: str
) -> None:
    model, live, _ = fitted
    offset = _written(model, live, tmp_path)
    folder = tmp_path / f"{TOPIC}-0"
    newest = _files(folder)[-1]
    data = newest.read_bytes()
    if damage == "truncated":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        newest.write_bytes(b"this is not an Arrow file at all")
    elif damage == "empty":
        newest.write_bytes(b"")
    elif damage == "no columns":
        buffer = io.BytesIO()
        pl.DataFrame({"something": [1, 2]}).write_ipc(buffer)
        newest.write_bytes(buffer.getvalue())
    elif damage == "beyond the blocks":
        newest = folder / newest.name.replace("-0.", "-7.")
        newest.write_bytes(data)
    elif damage == "fifo":  # a read would wait for a writer for ever
        newest.unlink()
        os.mkfifo(newest)
    elif damage == "bomb":  # a file of kilobytes that unpacks to a terabyte
        newest.write_bytes(arrow_bomb(data))
    else:  # an entity block with another number of accumulators
        block = Block(3, 1)
        block.slots_for(pl.Series(["c00001"]))
        newest.write_bytes(EntityState([block]).to_bytes(0))
    with pytest.raises(CheckpointError) as caught:
        _restore(model, tmp_path, live[offset:], offset)
    _one_line(caught.value, str(newest), f"delete {folder}", "end-of-history")
    if damage in ("fifo", "bomb"):
        _one_line(caught.value, "not a regular file" if damage == "fifo" else "unpack to 1,099,511,")


def test_a_checkpoint_of_another_group_is_refused_and_left_alone(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, live, _ = fitted
    _written(model, live, tmp_path)
    folder = tmp_path / f"{TOPIC}-0"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(CheckpointError) as caught:  # a new group starts at offset 0: nothing of the other's is valid
        _restore(model, tmp_path, live, 0, _stamp(model, group="other"))
    _one_line(caught.value, str(folder), "consumer group 'g1'", "'other'", "--state-dir")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # not one file of the other group deleted


def test_a_checkpoint_of_another_entity_config_is_refused(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, live, _ = fitted
    offset = _written(model, live, tmp_path)
    other = _other_entity_config(model)
    assert _meaning_of(other, model) != model.entity_meaning
    stamp = Stamp(TOPIC, GROUP, _meaning_of(other, model), "another-version")
    with pytest.raises(CheckpointError) as caught:
        _restore(model, tmp_path, live[offset:], offset, stamp)
    _one_line(caught.value, str(tmp_path / f"{TOPIC}-0"), "entity config", model.version)


def test_a_checkpoint_copied_from_another_topic_is_refused(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, live, _ = fitted
    offset = _written(model, live, tmp_path)
    shutil.copytree(tmp_path / f"{TOPIC}-0", tmp_path / "other-0")
    stamp = _stamp(model, topic="other")
    checkpoints = EntityCheckpoints(tmp_path, stamp)
    batch = Batch(live[offset : offset + 10], origin=lambda j: ("other", 0, offset + j, None))
    with pytest.raises(CheckpointError) as caught:
        checkpoints.prepare(batch, model.new_state().entities)  # type: ignore[arg-type]
    _one_line(caught.value, "topic 'cards'", "'other'")


@pytest.mark.parametrize("stamp", [b"{not json", b"[1, 2]", b'{"format": 99}'])
def test_a_damaged_or_newer_stamp_is_refused(fitted, tmp_path: Path, stamp: bytes) -> None:  # type: ignore[no-untyped-def]
    model, live, _ = fitted
    offset = _written(model, live, tmp_path)
    (tmp_path / f"{TOPIC}-0" / "stamp.json").write_bytes(stamp)
    with pytest.raises(CheckpointError) as caught:
        _restore(model, tmp_path, live[offset:], offset)
    _one_line(caught.value, "stamp.json", "upgrade segscope" if b"99" in stamp else "delete")


def test_an_unstamped_checkpoint_of_an_earlier_release_is_adopted_with_a_warning(  # type: ignore[no-untyped-def]
    fitted, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, live, _ = fitted
    whole = model.score(live, state=model.new_state())
    offset = _written(model, live, tmp_path)
    stamp = tmp_path / f"{TOPIC}-0" / "stamp.json"
    stamp.unlink()
    with caplog.at_level(logging.WARNING, logger="segscope.stream"):
        restored = _restore(model, tmp_path, live[offset:], offset)
    assert_frame_equal(restored, whole[offset:], check_exact=True)
    warned = [r.getMessage() for r in caplog.records if "no stamp" in r.getMessage()]
    assert len(warned) == 1 and str(stamp.parent) in warned[0]
    assert json.loads(stamp.read_text())["group"] == GROUP  # stamped now


def test_an_unstamped_checkpoint_that_does_not_fit_the_entity_config_is_refused(  # type: ignore[no-untyped-def]
    fitted, tmp_path: Path
) -> None:
    model, live, _ = fitted
    offset = _written(model, live, tmp_path)
    folder = tmp_path / f"{TOPIC}-0"
    (folder / "stamp.json").unlink()
    block = Block(4, 2)
    block.slots_for(pl.Series(["c00001"]))
    _files(folder)[-1].write_bytes(EntityState([block]).to_bytes(0))
    with pytest.raises(CheckpointError) as caught:
        _restore(model, tmp_path, live[offset:], offset)
    _one_line(caught.value, str(folder))
    assert not (folder / "stamp.json").exists()  # not adopted


def test_a_hot_swap_to_another_entity_config_restarts_the_checkpoints(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """After a swap the folders of this process's partitions carry the new config; a partition stamped with the
    config this process left (another process had not swapped yet) restarts too; a new process refuses it."""
    model, live, _ = fitted
    offset = _written(model, live, tmp_path)
    shutil.copytree(tmp_path / f"{TOPIC}-0", tmp_path / f"{TOPIC}-1")
    stamp1 = tmp_path / f"{TOPIC}-1" / "stamp.json"
    stamp1.write_text(stamp1.read_text().replace('"partition": 0', '"partition": 1'))
    checkpoints = EntityCheckpoints(tmp_path, _stamp(model))
    state = model.new_state()
    _stream(model, checkpoints, state, live[offset : offset + 50], offset)
    new = Stamp(TOPIC, GROUP, _meaning_of(_other_entity_config(model), model), "v2")
    with pytest.raises(CheckpointError):  # a process that never ran the old config refuses partition 1
        EntityCheckpoints(tmp_path, new).prepare(
            Batch(live[:5], origin=lambda j: (TOPIC, 1, offset + j, None)),
            model.new_state().entities,  # type: ignore[arg-type]
        )
    checkpoints.rebase(new)
    assert not _files(tmp_path / f"{TOPIC}-0")
    assert json.loads((tmp_path / f"{TOPIC}-0" / "stamp.json").read_text())["entities"] == new.entities
    checkpoints.prepare(Batch(live[:5], origin=lambda j: (TOPIC, 1, offset + j, None)), state.entities)
    assert not _files(tmp_path / f"{TOPIC}-1")
    assert json.loads(stamp1.read_text())["entities"] == new.entities


def test_a_state_dir_that_is_a_file_is_one_error(fitted, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    model, _, bundle = fitted
    file = tmp_path / "state"
    file.write_text("not a folder")
    with pytest.raises(CheckpointError) as caught:
        EntityCheckpoints(file, _stamp(model))
    _one_line(caught.value, str(file), "not a folder")
    args = ["--bootstrap", "127.0.0.1:9", "--in-topic", "a", "--out-topic", "b", "--state-dir", str(file)]
    _one_line_error(run_cli("stream", "--bundle", bundle, *args), str(file), "not a folder")
    assert file.read_text() == "not a folder"


def test_a_partition_folder_that_is_a_file_is_one_error(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, live, _ = fitted
    (tmp_path / f"{TOPIC}-0").write_text("x")
    with pytest.raises(CheckpointError) as caught:
        _restore(model, tmp_path, live[:10], 0)
    _one_line(caught.value, str(tmp_path / f"{TOPIC}-0"), "not a folder")


# ------------------------------------------------------------------------------------------------ registry
@pytest.fixture
def registry(bundle: Path, tmp_path: Path) -> Path:
    path = tmp_path / "reg"
    reg.ensure_registry(path, seed_bundle=bundle)
    return path


def _second_version(registry: Path, suffix: str = "b") -> str:
    first = reg.current_version(registry)
    version = f"{first[:15]}-{suffix}"
    Model.load(registry).with_version(version).save(registry / "versions" / version)  # sorts after the first
    return version


def _damage(version: Path) -> None:
    artifact = next(p for p in sorted(version.rglob("*")) if p.is_file() and p.name != "manifest.json")
    artifact.write_bytes(artifact.read_bytes() + b"\x00")


def test_promote_on_a_registry_without_versions_is_one_error(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "empty"
    (path / "versions").mkdir(parents=True)
    (path / "CURRENT").write_text("20250101-000000-abcdef01\n")
    _one_line_error(run_cli("promote", path), "no versions", str(path))
    with pytest.raises(BundleError, match="no versions"):
        reg.list_versions(path)


def test_promoting_a_damaged_version_is_refused(run_cli, registry: Path) -> None:  # type: ignore[no-untyped-def]
    first = reg.current_version(registry)
    second = _second_version(registry)
    _damage(registry / "versions" / second)
    _one_line_error(run_cli("promote", registry, "--version", second), second, "checksum")
    _one_line_error(run_cli("promote", registry), second)  # the newest, by default
    assert reg.current_version(registry) == first
    assert [e["version"] for e in reg.log(registry)] == [first]
    with pytest.raises(BundleError, match="checksum"):
        reg.set_current(registry, second, action="rollback")


def test_promoting_a_version_that_needs_trust_is_still_allowed(registry: Path) -> None:
    """Verification checks integrity only: whether a pickled component may load is the loader's decision."""
    second = _second_version(registry)
    folder = registry / "versions" / second
    (folder / "extra.pkl").write_bytes(b"never unpickled by a promotion")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["extra.pkl"] = hashlib.sha256((folder / "extra.pkl").read_bytes()).hexdigest()
    digest = getattr(bundle_format, "manifest_digest", None)  # the manifest's own checksum, where it has one
    if digest is not None:
        manifest["manifest_sha256"] = digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="trust"):
        Model.load(folder)
    reg.set_current(registry, second, action="promote")
    assert reg.current_version(registry) == second


def test_a_damaged_plain_bundle_is_not_turned_into_a_registry(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "plain"
    model.save(path)
    _damage(path)
    with pytest.raises(BundleError, match="checksum"):
        reg.ensure_registry(path)
    assert (path / "manifest.json").is_file() and not reg.is_registry(path)  # left as it was


def test_a_versions_folder_that_is_a_symlink_is_refused(run_cli, registry: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (registry / "versions").rename(elsewhere / "versions")
    (registry / "versions").symlink_to(elsewhere / "versions")
    with pytest.raises(BundleError, match="symbolic link") as caught:
        Model.load(registry)
    assert "\n" not in str(caught.value)
    with pytest.raises(BundleError, match="symbolic link"):
        reg.list_versions(registry)
    _one_line_error(run_cli("promote", registry), "symbolic link")
    _one_line_error(run_cli("inspect", registry), "symbolic link")


def test_a_version_folder_that_is_a_symlink_is_refused(run_cli, registry: Path, bundle: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = reg.current_version(registry)
    shutil.copytree(registry / "versions" / first, tmp_path / "outside")
    (registry / "versions" / f"{first[:15]}-zz").symlink_to(tmp_path / "outside")
    with pytest.raises(BundleError, match="symbolic link"):
        reg.list_versions(registry)
    _one_line_error(run_cli("promote", registry), "symbolic link", f"{first[:15]}-zz")
    assert reg.current_version(registry) == first


# ------------------------------------------------------------------------------------------------ the watcher
def test_the_watcher_keeps_the_current_model_when_a_new_current_does_not_load(  # type: ignore[no-untyped-def]
    registry: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = ModelWatcher(registry, trusted=False)
    first = watcher.model.version
    second, third = _second_version(registry), _second_version(registry, "c")
    _damage(registry / "versions" / second)
    (registry / "CURRENT").write_text(second + "\n")  # as a hand edit or an older segscope would
    with caplog.at_level(logging.WARNING, logger="segscope.stream"):
        assert watcher.refresh() is False
        assert watcher.refresh() is False
    assert watcher.model.version == first
    lines = [r.getMessage() for r in caplog.records if second in r.getMessage()]
    assert len(lines) == 1 and "does not load" in lines[0] and first in lines[0], lines
    (registry / "CURRENT").write_text(third + "\n")
    assert watcher.refresh() is True and watcher.pointer == third  # a loadable promotion is taken again


# ------------------------------------------------------------------------------------------------ through a broker
def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err[-3000:]
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_stream_stops_with_one_line_on_a_foreign_or_damaged_checkpoint_and_rebuilds_once_it_is_deleted(  # type: ignore[no-untyped-def]
    fitted, kafka_bootstrap: str, tmp_path: Path
) -> None:
    _, live, bundle = fitted
    topic, state = "round2.entities.in", tmp_path / "state"
    create_topic(kafka_bootstrap, topic, partitions=1)
    keys = [c.encode() for c in live["card_id"]]
    half = live.height // 2
    produce(kafka_bootstrap, topic, records(live[:half]), keys=keys[:half])

    def run(group: str, out: str) -> tuple[int, str]:
        args = ["--in-topic", topic, "--out-topic", out, "--group", group, "--batch-size", "100",
                "--state-dir", str(state), "--idle-exit", "3"]  # fmt: skip
        proc = start_stream(bundle, kafka_bootstrap, *args)
        _, err = proc.communicate(timeout=300)
        return proc.returncode, err

    code, err = run("g-round2", "round2.out")
    assert code == 0 and not _error_lines(err), err[-2000:]
    folder = state / f"{topic}-0"
    assert (folder / "stamp.json").is_file() and _files(folder)

    code, err = run("g-round2-other", "round2.other.out")  # another group on the same --state-dir
    lines = _error_lines(err)
    assert code == 2 and len(lines) == 1 and "consumer group 'g-round2'" in lines[0] and str(folder) in lines[0], err
    assert _files(folder)  # the other group's files are left alone

    newest = _files(folder)[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # cut short
    produce(kafka_bootstrap, topic, records(live[half:]), keys=keys[half:])
    code, err = run("g-round2", "round2.out")
    lines = _error_lines(err)
    assert code == 2 and len(lines) == 1 and str(newest) in lines[0] and f"delete {folder}" in lines[0], err
    assert committed_offsets(kafka_bootstrap, "g-round2") == {f"{topic}/0": half}  # nothing scored past it

    shutil.rmtree(folder)  # the documented rebuild: from the bundle's end-of-history state
    code, err = run("g-round2", "round2.out")
    assert code == 0 and "has no entity checkpoint" in err, err[-2000:]
    assert len({r["id"] for r in consume_all(kafka_bootstrap, "round2.out")}) == live.height


def test_a_promotion_to_another_entity_config_restamps_the_checkpoints_and_a_restart_takes_them(  # type: ignore[no-untyped-def]
    fitted, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The watcher restarts the entities on a swap to another entity config; the checkpoints follow, so the
    restarted stream (now on the promoted version) restores them instead of refusing them as foreign."""
    model, live, bundle = fitted
    events = make_card_stream(150, days=12, seed=31)
    other = Model(model.config.model_copy(update={"entities": _other_entity_config(model)}))
    other = other.fit(events[: int(events.height * 0.6)]).with_version(f"{model.version[:15]}-entities-b")
    registry = tmp_path / "reg"
    reg.ensure_registry(registry, seed_bundle=bundle)
    other.save(registry / "versions" / other.version)

    topic, out, group, state = "round2.swap.in", "round2.swap.out", "g-round2-swap", tmp_path / "state"
    create_topic(kafka_bootstrap, topic, partitions=1)
    keys = [c.encode() for c in live["card_id"]]
    half = live.height // 2
    args = ["--in-topic", topic, "--out-topic", out, "--group", group, "--batch-size", "100",
            "--state-dir", str(state)]  # fmt: skip
    proc = start_stream(registry, kafka_bootstrap, *args)
    produce(kafka_bootstrap, topic, records(live[:half]), keys=keys[:half])
    wait_until(lambda: count(kafka_bootstrap, out) >= half, timeout=240, proc=proc)
    reg.set_current(registry, other.version, action="promote")
    time.sleep(2)
    produce(kafka_bootstrap, topic, records(live[half:-50]), keys=keys[half:-50])
    wait_until(lambda: count(kafka_bootstrap, out) >= live.height - 50, timeout=240, proc=proc)
    code, err = terminate(proc)
    assert code == 0, err[-2000:]
    assert f"switched to model version {other.version}" in err and "entity checkpoints restarted" in err, err[-2000:]
    stamp = json.loads((state / f"{topic}-0" / "stamp.json").read_text())
    assert stamp["entities"] == other.entity_meaning != model.entity_meaning

    produce(kafka_bootstrap, topic, records(live[-50:]), keys=keys[-50:])
    proc = start_stream(registry, kafka_bootstrap, *args, "--idle-exit", "3")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    scored = {r["id"]: r["model_version"] for r in consume_all(kafka_bootstrap, out)}
    assert len(scored) == live.height and scored[live["txn_id"][-1]] == other.version
