"""A watched folder (`segscope watch`): each file that lands is scored once, as `score` would, across restarts;
a changed file again; a bad file is one recorded line and never a half-written output; a promotion reaches the
next file; files still being written wait."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from segscope import registry
from segscope.exceptions import ConfigError, SegscopeWarning
from segscope.model import Model
from segscope.pipeline import score_file
from segscope.watch import LEDGER, FolderWatch


@pytest.fixture
def folders(tmp_path: Path, new_records: pl.DataFrame) -> tuple[Path, Path]:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    new_records.head(600).write_parquet(inbox / "day1.parquet")
    new_records.tail(500).write_csv(inbox / "day2.csv")
    return inbox, out


def _ledger(out: Path) -> dict[str, dict[str, object]]:
    files: dict[str, dict[str, object]] = json.loads((out / LEDGER).read_text())["files"]
    return files


def test_each_file_is_scored_once_as_score_would_and_a_restart_takes_only_what_is_new(
    folders: tuple[Path, Path], bundle: Path, model: Model, new_records: pl.DataFrame, tmp_path: Path
) -> None:
    inbox, out = folders
    did = FolderWatch(inbox, bundle, out, settle=0).run(once=True)
    assert sorted(name for name, _ in did) == ["day1.parquet", "day2.csv"]
    score_file(model, inbox / "day2.csv", tmp_path / "by_score.parquet")
    assert_frame_equal(pl.read_parquet(out / "day2.scored.parquet"), pl.read_parquet(tmp_path / "by_score.parquet"))
    first = (out / "day1.scored.parquet").stat().st_mtime_ns
    new_records.slice(100, 300).write_ndjson(inbox / "day3.ndjson")
    again = FolderWatch(inbox, bundle, out, settle=0).run(once=True)  # a restart: a new process, the same ledger
    assert [name for name, _ in again] == ["day3.ndjson"]
    assert (out / "day1.scored.parquet").stat().st_mtime_ns == first  # not scored twice
    ledger = _ledger(out)
    assert {n: e["rows"] for n, e in ledger.items()} == {"day1.parquet": 600, "day2.csv": 500, "day3.ndjson": 300}
    assert {e["model_version"] for e in ledger.values()} == {model.version}
    # a file written again (new content) is new again
    new_records.head(50).write_parquet(inbox / "day1.parquet")
    os.utime(inbox / "day1.parquet", ns=(time.time_ns() - 10**10,) * 2)
    assert [n for n, _ in FolderWatch(inbox, bundle, out, settle=0).run(once=True)] == ["day1.parquet"]
    assert pl.read_parquet(out / "day1.scored.parquet").height == 50


def test_a_bad_file_is_one_recorded_line_and_no_output_while_the_others_are_scored(
    folders: tuple[Path, Path], bundle: Path, new_records: pl.DataFrame, run_cli, tmp_path: Path
) -> None:
    inbox, out = folders
    pl.DataFrame({"txn_id": ["x"], "nothing": [1]}).write_csv(inbox / "wrong.csv")
    duplicated = pl.concat([new_records.head(300), new_records.head(1)])  # found only after the last batch
    duplicated.write_parquet(inbox / "dup.parquet")
    for name in ("notes.txt", ".hidden.csv", "coming.csv.part", "coming.parquet.tmp"):
        (inbox / name).write_text("not a data file")
    (tmp_path / "secret.csv").write_text("txn_id,amount\nkey,1\n")
    (inbox / "link.csv").symlink_to(tmp_path / "secret.csv")  # a drop folder never reads a file elsewhere
    args = ("--bundle", bundle, "--out-dir", out, "--once", "--settle", "0")
    result = run_cli("watch", inbox, *args, "--batch-size", "100")
    assert result.code == 1 and "Traceback" not in result.err
    assert "2 file(s) scored" in result.err and "2 failed" in result.err
    ledger = _ledger(out)
    assert sorted(ledger) == ["day1.parquet", "day2.csv", "dup.parquet", "wrong.csv"]  # the others never taken
    assert "are missing" in str(ledger["wrong.csv"]["error"]) and "\n" not in str(ledger["wrong.csv"]["error"])
    assert "duplicate" in str(ledger["dup.parquet"]["error"]).lower()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [LEDGER, ".segscope-watch.lock", "day1.scored.parquet", "day2.scored.parquet"]
    )
    rerun = run_cli("watch", inbox, *args)
    assert rerun.code == 0 and "0 file(s) scored" in rerun.err  # a failed file waits until it changes


def test_misuse_is_one_line(folders: tuple[Path, Path], bundle: Path, run_cli) -> None:
    inbox, out = folders
    same = run_cli("watch", inbox, "--bundle", bundle, "--out-dir", inbox, "--once")
    assert same.code == 2 and "is the watched folder" in same.err and len(same.err.strip().splitlines()) == 1
    missing = run_cli("watch", inbox / "nope", "--bundle", bundle, "--out-dir", out, "--once")
    assert missing.code == 2 and "no such folder" in missing.err
    out.mkdir()
    (out / LEDGER).write_text("{not json")
    damaged = run_cli("watch", inbox, "--bundle", bundle, "--out-dir", out, "--once")
    assert damaged.code == 2 and "ledger is unreadable" in damaged.err
    assert not (out / "day1.scored.parquet").exists()


def test_a_file_still_being_written_waits_until_it_settles(folders: tuple[Path, Path], bundle: Path) -> None:
    inbox, out = folders
    job = FolderWatch(inbox, bundle, out, settle=0.3)
    job.run(once=True)  # just written: younger than settle
    assert job.waiting == ["day1.parquet", "day2.csv"] and not (out / "day1.scored.parquet").exists()
    seen: dict[str, tuple[int, int]] = {}
    assert job.poll(seen) == []  # first sight: not yet known to be steady
    time.sleep(0.4)
    with (inbox / "day2.csv").open("a") as growing:  # still growing: waits another round
        growing.write((inbox / "day2.csv").read_text().splitlines()[1] + "\n")
    os.utime(inbox / "day2.csv", ns=(time.time_ns() - 10**9,) * 2)
    assert [n for n, _ in job.poll(seen)] == ["day1.parquet"]
    assert [n for n, _ in job.poll(seen)] == ["day2.csv"]


def test_a_running_watch_picks_up_new_files_and_a_promoted_version(
    tmp_path: Path, history: pl.DataFrame, new_records: pl.DataFrame, config
) -> None:
    inbox, out, reg = tmp_path / "in", tmp_path / "out", tmp_path / "reg"
    inbox.mkdir()
    first = Model(config).fit(history)
    first.save(reg)
    registry.ensure_registry(reg)
    second = Model(config).fit(history.head(2500))
    second.save(reg / "versions" / second.version)
    job = FolderWatch(inbox, reg, out, settle=0.1)
    runner = threading.Thread(target=job.run, kwargs={"every": 0.1, "idle_exit": 3.0})
    runner.start()
    deadline = time.monotonic() + 20
    while not (out / ".segscope-watch.lock").exists():  # the running watch has taken its output folder
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.1)
    with pytest.raises(ConfigError, match="another segscope watch writes to"):  # one watcher per output folder
        FolderWatch(inbox, reg, out).run(once=True)

    def land(name: str, frame: pl.DataFrame) -> None:  # as a careful writer does: a temporary name, then rename
        frame.write_parquet(inbox / f"{name}.tmp")
        (inbox / f"{name}.tmp").rename(inbox / name)
        deadline = time.monotonic() + 20
        while not (out / LEDGER).exists() or name not in _ledger(out):
            assert time.monotonic() < deadline, f"{name} was not scored"
            time.sleep(0.05)

    land("a.parquet", new_records.head(200))
    registry.set_current(reg, second.version, action="promote")
    land("b.parquet", new_records.tail(200))
    damaged = next(p for p in sorted((reg / "versions" / first.version / "arrays").iterdir()) if p.is_file())
    damaged.write_bytes(b"not what the manifest's checksum says")  # the old version no longer loads
    registry.set_current(reg, first.version, action="rollback", verify=False)  # a promotion that does not load
    land("c.parquet", new_records.slice(500, 100))
    runner.join(timeout=30)
    assert not runner.is_alive()
    ledger = _ledger(out)
    assert [ledger[n]["model_version"] for n in ("a.parquet", "b.parquet", "c.parquet")] == [
        first.version,
        second.version,
        second.version,  # the damaged version did not load: the last good one kept scoring
    ]
    assert all(entry["status"] == "scored" for entry in ledger.values())


def test_a_name_is_one_file_never_a_pattern_nor_a_link_swapped_in(
    folders: tuple[Path, Path], bundle: Path, new_records: pl.DataFrame, model: Model, tmp_path: Path, run_cli
) -> None:
    inbox, out = folders
    new_records.head(7).write_csv(inbox / "[ab].csv")  # a pattern that day1/day2 do not match, a.csv/b.csv would
    new_records.head(100).write_csv(inbox / "a.csv")
    new_records.head(100).write_csv(inbox / "b.csv")
    new_records.head(9).write_csv(tmp_path / "lone[x].csv")
    new_records.head(100).write_csv(tmp_path / "lonex.csv")
    scored = run_cli("score", tmp_path / "lone[x].csv", "--bundle", bundle, "--out", tmp_path / "lone.parquet")
    assert scored.code == 0 and pl.read_parquet(tmp_path / "lone.parquet").height == 9  # score reads the name too
    weird = os.fsencode(inbox) + b"/caf\xff.csv"  # not UTF-8: still one file, read through its descriptor
    with open(weird, "wb") as fh:
        fh.write((inbox / "a.csv").read_bytes())
    job = FolderWatch(inbox, bundle, out, settle=0)
    odd = os.fsdecode(weird).rsplit("/", 1)[1]
    did = dict(job.run(once=True))
    assert {n: o.rows for n, o in did.items()} == {
        "[ab].csv": 7, "a.csv": 100, "b.csv": 100, "day1.parquet": 600, "day2.csv": 500, odd: 100
    }  # fmt: skip
    assert did[odd].out == "caf\\xff.scored.parquet"
    # a file listed, then swapped for a link to a secret before it is opened: refused, nothing of the secret read
    (tmp_path / "secret.csv").write_text("txn_id,amount\nSECRET,1\n")
    new_records.head(20).write_csv(inbox / "late.csv")
    key = job._candidates()["late.csv"]
    (inbox / "late.csv").unlink()
    (inbox / "late.csv").symlink_to(tmp_path / "secret.csv")
    outcome = job._score("late.csv", key, model, {})
    assert outcome.status == "failed" and "link" in str(outcome.error)
    assert not (out / "late.scored.parquet").exists() and not list(out.glob(".staging.*"))


def test_set_up_problems_are_one_line_and_a_killed_watch_leaves_nothing_behind(
    folders: tuple[Path, Path], bundle: Path, tmp_path: Path, run_cli
) -> None:
    inbox, out = folders
    (tmp_path / "afile").write_text("x")
    as_file = run_cli("watch", inbox, "--bundle", bundle, "--out-dir", tmp_path / "afile", "--once")
    assert as_file.code == 2 and "cannot write there" in as_file.err and "Traceback" not in as_file.err
    empty = tmp_path / "empty"
    empty.mkdir()
    no_bundle = run_cli("watch", empty, "--bundle", tmp_path / "nope", "--out-dir", out, "--idle-exit", "0")
    assert no_bundle.code == 2 and "Traceback" not in no_bundle.err  # said at start-up, not at the first file
    out.mkdir(exist_ok=True)
    (out / ".day1.scored.parquet.k3j2h1.tmp").write_bytes(b"half a file")  # what a SIGKILL mid-file leaves
    (out / ".staging.abc").mkdir()
    (out / "mine.tmp").write_text("a user's file")
    assert run_cli("watch", inbox, "--bundle", bundle, "--out-dir", out, "--once", "--settle", "0").code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [LEDGER, ".segscope-watch.lock", "day1.scored.parquet", "day2.scored.parquet", "mine.tmp"]
    )
    job = FolderWatch(inbox, bundle, out, settle=0)
    job.ledger()
    shutil.rmtree(inbox)
    with pytest.raises(ConfigError, match="the watched folder is gone"):
        job.poll({})


def test_a_warning_names_the_file_it_is_about_not_where_it_was_read(
    folders: tuple[Path, Path], bundle: Path, new_records: pl.DataFrame
) -> None:
    inbox, out = folders
    new_records.head(50).with_columns(pl.lit(None, dtype=pl.Float64).alias("amount")).write_parquet(
        inbox / "nulls.parquet"
    )
    with pytest.warns(SegscopeWarning) as said:
        FolderWatch(inbox, bundle, out, settle=0).run(once=True)
    messages = [str(w.message) for w in said]
    assert messages and all(m.startswith("nulls.parquet: ") and "staging" not in m for m in messages)
    assert any("column(s) ['amount'] are null in every row" in m for m in messages)
