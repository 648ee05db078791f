"""`score --state-dir` and `watch --state-dir`: files scored one after another with the maintenance pack as shipped
decide as the one file scored in order (levels, holds, the ladder's climb and the cooldown carried between them);
a folder of another entity config, a damaged set or a bundle without entities is one line; a run that fails
leaves the state as it was."""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from segscope.config import SegscopeConfig, load_config
from segscope.features.entity import ladder_lines
from segscope.file_state import lock_state_dir
from segscope.model import Model
from segscope.watch import FolderWatch
from tests.fuzz_bundle import arrow_bomb
from tests.test_stream_adapts import _machines

DAYS = [datetime(2024, 3, d) for d in (2, 3, 4, 5)]


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    """The pack fitted on the first day of three machines (a settles higher, b spikes, c drifts), saved; the three
    days after it, one CSV file each (day-2.csv ...) and all together (live.csv)."""
    root = tmp_path_factory.mktemp("machines")
    frame = _machines(4)
    history = frame.filter(pl.col("timestamp") < DAYS[0])
    Model(load_config("maintenance").with_features(id_column="reading_id", drop=())).fit(history).save(root / "pump")
    live = frame.filter(pl.col("timestamp") >= DAYS[0])
    live.write_csv(root / "live.csv")
    for i, (start, end) in enumerate(itertools.pairwise(DAYS)):
        live.filter((pl.col("timestamp") >= start) & (pl.col("timestamp") < end)).write_csv(root / f"day-{i + 2}.csv")
    return root, live


def _scored(run_cli: Callable[..., Any], data: Path, bundle: Path, out: Path, *state: Path) -> Any:
    """`segscope score DATA --bundle BUNDLE --out OUT [--state-dir STATE]`."""
    return run_cli("score", data, "--bundle", bundle, "--out", out, *(["--state-dir", *state] if state else []))


@pytest.fixture
def state(machines: tuple[Path, pl.DataFrame], run_cli: Callable[..., Any], tmp_path: Path) -> Path:
    """A state folder after the first day's file."""
    root, _ = machines
    assert _scored(run_cli, root / "day-2.csv", root / "pump", tmp_path / "a.csv", tmp_path / "state").code == 0
    return tmp_path / "state"


def _sets(state: Path) -> list[str]:
    return sorted(p.name for p in state.iterdir() if not p.name.startswith("."))  # .lock: the folder's lock


def _decisions(paths: list[Path]) -> pl.DataFrame:
    scored = pl.concat([pl.read_csv(p) for p in paths])
    return scored.select("reading_id", pl.selectors.starts_with("machine_id_"), "anomaly_score", "is_alert")


def test_files_scored_one_after_another_decide_as_one_file(
    machines: tuple[Path, pl.DataFrame], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    root, live = machines
    whole = _scored(run_cli, root / "live.csv", root / "pump", tmp_path / "whole.csv")
    assert whole.code == 0, whole.err
    outs = []
    for day in (2, 3, 4):
        outs.append(tmp_path / f"day-{day}.scored.csv")
        done = _scored(run_cli, root / f"day-{day}.csv", root / "pump", outs[-1], tmp_path / "state")
        assert done.code == 0, done.err
        assert f"the entities' state for the next file -> {tmp_path / 'state'}" in " ".join(done.err.split())
        assert "allowed_lateness" not in done.err  # in time order: nothing late
    expected = _decisions([tmp_path / "whole.csv"])
    assert expected["is_alert"].sum() >= 5  # the pack alarms on a, b and c: decisions worth comparing
    assert_frame_equal(_decisions(outs), expected)  # the same machine and libraries: to the bit
    # without the state each file starts from the end of the history: c's drift and a's new level alarm again
    fresh = tmp_path / "day-4.fresh.csv"
    assert _scored(run_cli, root / "day-4.csv", root / "pump", fresh).code == 0
    assert _decisions([fresh])["is_alert"].sum() > _decisions([outs[-1]])["is_alert"].sum()
    sets = _sets(tmp_path / "state")
    assert sets == ["000002", "000003"]  # the newest two sets are kept
    shown = run_cli("inspect", root / "pump", "--state-dir", tmp_path / "state")  # what the folder holds now
    said = " ".join(shown.out.split())
    assert shown.code == 0 and "3 entities in set 000003" in said, shown.err
    model = Model.load(root / "pump")
    whole_state = model.new_state()
    model.score(live, state=whole_state)
    assert whole_state.entities is not None
    (climbed,) = ladder_lines(model.config.entities, whole_state.entities)  # the one file's climb
    assert climbed in said and "entities past each count [0, 0]" not in climbed
    stamp = json.loads((tmp_path / "state" / "000003" / "state.json").read_text())
    assert stamp["after"] == "day-4.csv" and stamp["rows"] == live.filter(pl.col("timestamp") >= DAYS[2]).height


def test_a_watched_folder_carries_the_state_from_file_to_file_in_name_order(
    machines: tuple[Path, pl.DataFrame], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    root, _ = machines
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for day in (2, 3, 4):
        (inbox / f"day-{day}.csv").write_bytes((root / f"day-{day}.csv").read_bytes())
    job = FolderWatch(inbox, root / "pump", tmp_path / "out", out_format="csv", settle=0.0,
                      state_dir=tmp_path / "state")  # fmt: skip
    job.run(every=0.05, once=True)
    assert _scored(run_cli, root / "live.csv", root / "pump", tmp_path / "whole.csv").code == 0
    outs = [tmp_path / "out" / f"day-{day}.scored.csv" for day in (2, 3, 4)]
    assert_frame_equal(_decisions(outs), _decisions([tmp_path / "whole.csv"]))
    newest = sorted(p for p in (tmp_path / "state").iterdir() if p.name.isdigit())[-1]
    assert json.loads((newest / "state.json").read_text())["after"] == "day-4.csv"  # the file, not its staged name


def test_a_file_scored_after_a_later_one_is_named_with_its_late_records(
    machines: tuple[Path, pl.DataFrame], run_cli: Callable[..., Any], tmp_path: Path, state: Path
) -> None:
    root, live = machines
    assert _scored(run_cli, root / "day-4.csv", root / "pump", tmp_path / "b.csv", state).code == 0
    back = _scored(run_cli, root / "day-3.csv", root / "pump", tmp_path / "c.csv", state)  # a day behind the state
    said = " ".join(back.err.split())
    rows = live.filter((pl.col("timestamp") >= DAYS[1]) & (pl.col("timestamp") < DAYS[2])).height
    assert back.code == 0 and f"day-3.csv: {rows:,} record(s) came more than allowed_lateness behind" in said, said
    assert "score files, and the rows of each, in time order" in said


def test_a_folder_that_is_not_this_bundle_s_state_is_one_line_and_nothing_is_written(
    machines: tuple[Path, pl.DataFrame], run_cli: Callable[..., Any], tmp_path: Path, state: Path
) -> None:
    root, live = machines
    other = load_config("maintenance").with_features(id_column="reading_id", drop=())
    spec = other.entities[0].model_copy(update={"ttl": "7d"})
    history = live.filter(pl.col("timestamp") < DAYS[1])
    Model(other.model_copy(update={"entities": (spec,)})).fit(history).save(tmp_path / "other")
    refused = _scored(run_cli, root / "day-3.csv", tmp_path / "other", tmp_path / "b.csv", state)
    assert refused.code != 0 and "holds the state of another entity config" in refused.err
    assert "Traceback" not in refused.err and len(refused.err.strip().splitlines()) == 1
    assert not (tmp_path / "b.csv").exists() and _sets(state) == ["000001"]
    # a damaged set names itself; a bundle without entities says --state-dir has nothing to carry
    (state / "000001" / "entities-0.arrow").write_bytes(b"not arrow")
    damaged = _scored(run_cli, root / "day-3.csv", root / "pump", tmp_path / "c.csv", state)
    assert damaged.code != 0 and "entities-0.arrow cannot be read" in damaged.err and "Traceback" not in damaged.err
    Model(SegscopeConfig().with_features(id_column="reading_id", drop=())).fit(history.drop("timestamp")).save(
        tmp_path / "flat"
    )
    flat = _scored(run_cli, root / "day-3.csv", tmp_path / "flat", tmp_path / "d.csv", tmp_path / "flat-state")
    assert flat.code != 0 and "this bundle has no entities" in flat.err and not (tmp_path / "flat-state").exists()
    (tmp_path / "a-file").write_text("")
    not_folder = _scored(run_cli, root / "day-3.csv", root / "pump", tmp_path / "e.csv", tmp_path / "a-file")
    assert not_folder.code != 0 and "is not a folder" in not_folder.err


def test_a_run_that_fails_leaves_the_state_as_it_was(
    machines: tuple[Path, pl.DataFrame], run_cli: Callable[..., Any], tmp_path: Path, state: Path
) -> None:
    root, _ = machines
    before = {p.name: p.read_bytes() for p in (state / "000001").iterdir()}
    bad = pl.read_csv(root / "day-3.csv").with_columns(pl.lit("hot").alias("value"))  # a sensor that is text
    bad.write_csv(tmp_path / "bad.csv")
    failed = _scored(run_cli, tmp_path / "bad.csv", root / "pump", tmp_path / "b.csv", state)
    assert failed.code != 0 and "Traceback" not in failed.err
    assert _sets(state) == ["000001"]
    assert {p.name: p.read_bytes() for p in (state / "000001").iterdir()} == before


def test_a_planted_state_is_one_line_never_a_hang_or_a_silent_change(
    machines: tuple[Path, pl.DataFrame], run_cli: Callable[..., Any], tmp_path: Path, state: Path
) -> None:
    """What a red team left in a state folder: a FIFO for the entity file (a read would block for ever), an alert
    time of +inf (every machine silenced for good, and the next state too), a set without its stamp, a run that
    holds the folder, a compression bomb."""
    root, _ = machines
    arrow = state / "000001" / "entities-0.arrow"
    good = arrow.read_bytes()
    arrow.unlink()
    os.mkfifo(arrow)
    fifo = _scored(run_cli, root / "day-3.csv", root / "pump", tmp_path / "b.csv", state)
    assert fifo.code != 0 and "not a regular file" in fifo.err and not (tmp_path / "b.csv").exists()
    arrow.unlink()
    frame = pl.read_ipc(io.BytesIO(good))
    frame.with_columns(pl.lit(float("inf")).alias("last_alert")).write_ipc(arrow)
    silenced = _scored(run_cli, root / "day-3.csv", root / "pump", tmp_path / "c.csv", state)
    assert silenced.code != 0 and "['last_alert'] hold values the state never writes" in silenced.err
    arrow.write_bytes(arrow_bomb(good))  # a file of kilobytes that unpacks to a terabyte
    bomb = _scored(run_cli, root / "day-3.csv", root / "pump", tmp_path / "g.csv", state)
    assert bomb.code != 0 and "unpack to 1,099,511," in bomb.err and "Traceback" not in bomb.err
    arrow.write_bytes(good)
    (state / "000002").mkdir()  # a newer set without its stamp: refused, not passed over for the one before
    unstamped = _scored(run_cli, root / "day-3.csv", root / "pump", tmp_path / "d.csv", state)
    assert unstamped.code != 0 and "000002/state.json is damaged or not segscope's" in unstamped.err
    (state / "000002").rmdir()
    held = lock_state_dir(state, Model.load(root / "pump"))
    try:
        busy = _scored(run_cli, root / "day-3.csv", root / "pump", tmp_path / "e.csv", state)
        assert busy.code != 0 and "is in use by another run" in busy.err and not (tmp_path / "e.csv").exists()
    finally:
        os.close(held)
    assert _scored(run_cli, root / "day-3.csv", root / "pump", tmp_path / "f.csv", state).code == 0
    assert _sets(state) == ["000001", "000002"]
