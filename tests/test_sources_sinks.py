from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from segscope._io import detect_format
from segscope.exceptions import SchemaError, SinkError, SourceError
from segscope.sinks import FileSink, ListSink, write_frame
from segscope.sources.files import count_rows, estimate_rows, iter_batches, scan_file


def test_iter_batches_keeps_order_and_bounds(tmp_path: Path) -> None:
    frame = pl.DataFrame({"i": range(10_000), "s": [str(i) for i in range(10_000)]})
    frame.write_parquet(tmp_path / "f.parquet", row_group_size=3000)
    batches = list(iter_batches(tmp_path / "f.parquet", batch_size=700))
    assert all(b.height <= 700 for b in batches)
    assert pl.concat(batches).equals(frame)
    assert count_rows(tmp_path / "f.parquet") == 10_000


def test_a_failing_source_leaves_no_output(tmp_path: Path, files: Path, model) -> None:
    from segscope.pipeline import score_file

    frame = pl.read_parquet(files / "new.parquet")
    bad = frame.with_columns(pl.col("amount").cast(pl.String))
    row = pl.int_range(pl.len()) == 1200
    bad = bad.with_columns(pl.when(row).then(pl.lit("x")).otherwise("amount").alias("amount"))
    bad.write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="row 1200"):
        score_file(model, tmp_path / "bad.parquet", tmp_path / "out.parquet", batch_size=500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]


def test_file_sink_is_atomic(tmp_path: Path) -> None:
    frame = pl.DataFrame({"a": [1.0], "r": [[{"f": "x", "v": 1.0}]]})
    with FileSink(tmp_path / "o.csv") as sink:
        sink.write(frame)
        assert not (tmp_path / "o.csv").exists()  # only renamed into place on close
    assert pl.read_csv(tmp_path / "o.csv")["r"][0] == '[{"f":"x","v":1.0}]'
    sink = FileSink(tmp_path / "p.parquet")
    sink.write(frame)
    sink.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv"]


def test_list_sink() -> None:
    sink = ListSink()
    sink.write(pl.DataFrame({"a": [1]}))
    sink.write(pl.DataFrame({"a": [2]}))
    sink.close()
    assert sink.closed
    assert sink.frame()["a"].to_list() == [1, 2]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unknown file extension"):
        detect_format("x.xls")
    (tmp_path / "d.parquet").mkdir()
    with pytest.raises(SourceError, match="is a directory"):
        scan_file(tmp_path / "d.parquet")
    with pytest.raises(SinkError, match="does not exist"):
        write_frame(pl.DataFrame({"a": [1]}), tmp_path / "missing" / "o.parquet")


@pytest.mark.parametrize("suffix", ["csv", "ndjson", "parquet"])
@pytest.mark.parametrize(("dropped", "out"), [("amount", "out.parquet"), ("txn_id", "out.csv"), ("amount", "-")])
def test_a_file_without_a_model_s_column_is_refused_before_anything_is_written(
    tmp_path: Path, new_records: pl.DataFrame, model, suffix: str, dropped: str, out: str, capsys
) -> None:
    """The columns are checked on the first batch the run reads (no read of the file of their own), the id too."""
    from segscope.pipeline import score_file

    path = tmp_path / f"in.{suffix}"
    write_frame(new_records.head(300).drop(dropped), path)
    with pytest.raises(SchemaError, match=rf"in\.{suffix}: column\(s\) \['{dropped}'\] are missing"):
        score_file(model, path, out if out == "-" else tmp_path / out, batch_size=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name] and capsys.readouterr().out == ""


def test_a_text_file_s_rows_are_estimated_from_its_size_and_first_lines(tmp_path: Path) -> None:
    frame = pl.DataFrame({"i": range(200_000), "s": [f"x{i % 997}" for i in range(200_000)]})
    for suffix in ("csv", "ndjson"):
        write_frame(frame, tmp_path / f"f.{suffix}")
        estimate = estimate_rows(tmp_path / f"f.{suffix}", sample_bytes=64 << 10)
        assert estimate is not None and abs(estimate - 200_000) / 200_000 < 0.05, (suffix, estimate)
        write_frame(frame.head(7), tmp_path / f"small.{suffix}")
        assert estimate_rows(tmp_path / f"small.{suffix}") == 7  # read whole: exact
    write_frame(frame, tmp_path / "f.parquet")
    assert estimate_rows(tmp_path / "f.parquet") == 200_000  # the footer's count
    (tmp_path / "wide.csv").write_text("a" * 5000 + "\n")
    assert estimate_rows(tmp_path / "wide.csv", sample_bytes=1000) is None  # no line ends in the sample


def test_what_a_killed_run_left_is_removed_by_a_later_run_to_the_same_output(
    tmp_path: Path, files: Path, bundle: Path, model
) -> None:
    """SIGKILL runs no handler: the temporary folder of the output stays. A later run to the same output removes
    it once it has sat unchanged for a minute with no run holding its lock; a folder a live run holds stays, and
    so does a fresh one (a run may be between creating its folder and locking it)."""
    import fcntl
    import os
    import subprocess
    import sys
    import time

    from segscope.pipeline import score_file

    small = pl.read_parquet(files / "new.parquet")
    pl.concat([small] * max(1, 300_000 // small.height)).write_parquet(tmp_path / "big.parquet")
    out = tmp_path / "out.parquet"
    cmd = [sys.executable, "-m", "segscope.cli", "score", str(tmp_path / "big.parquet"), "--bundle", str(bundle)]
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, left = time.monotonic() + 120, []
    while time.monotonic() < deadline and proc.poll() is None:
        left = list(tmp_path.glob(".out.parquet.*.tmp"))
        if left and any(p.stat().st_size for p in left[0].iterdir()):
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert len(left) == 1 and left[0].is_dir() and not out.exists(), "the run ended before it wrote anything"
    score_file(model, files / "new.parquet", out)
    assert left[0].is_dir()  # a minute has not passed: it could be a run about to lock it
    long_ago = time.time() - 120
    os.utime(left[0], (long_ago, long_ago))
    live = tmp_path / ".out.parquet.abcd1234.tmp"
    live.mkdir()
    os.utime(live, (long_ago, long_ago))
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        score_file(model, files / "new.parquet", out)
        assert not left[0].exists() and live.is_dir()
    finally:
        os.close(held)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "big.parquet", "out.parquet"]
    assert pl.read_parquet(out).height == small.height


def test_on_a_file_system_without_locks_the_output_is_written_and_nothing_else_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where flock is refused (some network mounts), a run cannot tell a leftover from a live run: it writes its
    output and removes nothing of others."""
    import errno
    import fcntl
    import os
    import time

    def refused(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    other = tmp_path / ".o.parquet.abcd1234.tmp"
    other.mkdir()
    long_ago = time.time() - 120
    os.utime(other, (long_ago, long_ago))
    monkeypatch.setattr(fcntl, "flock", refused)
    write_frame(pl.DataFrame({"a": [1.0, 2.0]}), tmp_path / "o.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "o.parquet"]
    assert pl.read_parquet(tmp_path / "o.parquet")["a"].to_list() == [1.0, 2.0]
