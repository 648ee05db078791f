"""The one scoring loop (``segscope.run``) over the Source and Sink contracts, with in-memory sources and sinks: what
is written, counted and committed, in which order, and what a failure leaves behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from segscope import Model, SinkError
from segscope.exceptions import DataError
from segscope.run import AllOrNothing, KeepsDeadLetters, Positioned, RunState, Transactional, run
from segscope.sinks.memory import ListSink
from segscope.sources.base import Batch, DeadLetter
from segscope.sources.memory import FrameSource


class _Source(FrameSource):
    """Frames in batches, with what the loop asked of it, and a dead letter in each batch's place when ``dead``."""

    def __init__(self, frame: pl.DataFrame, *, batch_size: int, dead: bool = False) -> None:
        super().__init__(frame, batch_size=batch_size)
        self.dead, self.calls = dead, list[str]()

    def open(self) -> None:
        self.calls.append("open")

    def iter_batches(self) -> Iterator[Batch]:
        for batch in super().iter_batches():
            if self.dead:
                batch.dead.append(DeadLetter("not JSON", "in", 0, batch.start, None, b"{"))
            yield batch

    def commit(self, batch: Batch) -> None:
        self.calls.append(f"commit {batch.start}")

    def close(self) -> None:
        self.calls.append("close")


class _Sink(ListSink):
    """Frames in memory, with what the loop asked of it, and the dead letters it was handed."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls, self.letters = calls, list[DeadLetter]()

    def write(self, scored: pl.DataFrame, batch: Batch | None = None) -> None:
        super().write(scored, batch)
        self.calls.append(f"write {batch.start if batch is not None else '?'}")

    def flush(self) -> None:
        self.calls.append("flush")

    def abort(self) -> None:
        super().abort()
        self.calls.append("abort")

    def dead_letters(self, letters: list[DeadLetter], topic: str | None = None, batch: Batch | None = None) -> None:
        self.letters += letters


def test_every_batch_is_scored_written_then_committed_in_order(model: Model, new_records: pl.DataFrame) -> None:
    frame = new_records.head(1000)
    source = _Source(frame, batch_size=300)
    sink = _Sink(source.calls)
    state = run(source, model, sink, RunState.start(model))
    assert_frame_equal(sink.frame(), model.score(frame, state=model.new_state()))
    assert (state.rows, state.batches, state.dead_letters) == (1000, 4, 0)
    assert state.alerts == int(sink.frame()["is_alert"].sum())
    batches = [call for s in (0, 300, 600, 900) for call in (f"write {s}", "flush", f"commit {s}")]
    assert source.calls == ["open", *batches, "close"]
    assert sink.closed


@pytest.mark.parametrize("ahead", [False, True])
def test_a_refused_run_aborts_the_sink_and_closes_the_source(
    model: Model, new_records: pl.DataFrame, ahead: bool
) -> None:
    source = _Source(new_records.head(500), batch_size=200)
    sink = _Sink(source.calls)

    def refuse(state: RunState) -> None:
        raise DataError(f"refused after {state.rows} rows")

    with pytest.raises(DataError, match="refused after 500 rows"):
        run(source, model, sink, RunState.start(model), ahead=ahead, on_end=refuse)
    assert sink.frames == [] and not sink.closed
    assert source.calls[-2:] == ["abort", "close"]


def test_dead_letters_go_to_a_sink_that_keeps_them_and_are_counted(model: Model, new_records: pl.DataFrame) -> None:
    source = _Source(new_records.head(400), batch_size=100, dead=True)
    keeps, plain = _Sink(source.calls), ListSink()
    assert isinstance(keeps, KeepsDeadLetters) and not isinstance(plain, KeepsDeadLetters)
    run(source, model, keeps, RunState.start(model))
    assert [letter.offset for letter in keeps.letters] == [0, 100, 200, 300]
    state = run(_Source(new_records.head(400), batch_size=100, dead=True), model, plain, RunState.start(model))
    assert (state.rows, state.dead_letters) == (400, 4) and plain.frame().height == 400


class _TransactionalSink(_Sink):
    transactional_id: str | None = "segscope-test"

    def begin(self, stopping: Any = None) -> None:
        self.calls.append("begin")

    def commit_transaction(self, positions: dict[Any, int], group_metadata: Any, stopping: Any = None) -> bool:
        self.calls.append(f"commit_transaction {positions} {group_metadata}")
        return positions != {"p": 200}


class _PositionedSource(_Source):
    def iter_batches(self) -> Iterator[Batch]:
        for batch in super().iter_batches():
            batch.position = {"p": batch.start + batch.frame.height}
            yield batch

    def commit_positions(self, positions: dict[Any, int]) -> None:
        raise AssertionError("a transaction commits the positions")

    def rewind(self, stopping: Any = None) -> dict[Any, int]:
        return {}

    def group_metadata(self) -> Any:
        return "group"


def test_a_transactional_sink_commits_each_batch_with_the_source_positions(
    model: Model, new_records: pl.DataFrame
) -> None:
    source = _PositionedSource(new_records.head(300), batch_size=100)
    sink = _TransactionalSink(source.calls)
    assert isinstance(sink, Transactional) and isinstance(source, Positioned)
    with pytest.raises(SinkError, match="transaction was aborted"):
        run(source, model, sink, RunState.start(model))
    assert source.calls == [
        "open",
        *["begin", "write 0", "commit_transaction {'p': 100} group"],
        *["begin", "write 100", "commit_transaction {'p': 200} group"],
        "abort",
        "close",
    ]
    sink.transactional_id = None  # a sink that could but is not in transactions: flushed, then the source commits
    run(_PositionedSource(new_records.head(100), batch_size=100), model, sink, RunState.start(model))
    with pytest.raises(SinkError, match="this source has none"):
        run(_Source(new_records.head(100), batch_size=100), model, _TransactionalSink([]), RunState.start(model))


def test_only_a_file_sink_is_all_or_nothing(tmp_path: Path) -> None:
    from segscope.sinks.files import FileSink, StdoutSink

    assert isinstance(FileSink(tmp_path / "out.parquet"), AllOrNothing)
    assert not isinstance(StdoutSink(), AllOrNothing) and not isinstance(ListSink(), AllOrNothing)
