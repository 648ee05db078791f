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
from segscope.exceptions import BackToLastCommit, DataError
from segscope.run import (
    Acknowledging,
    AllOrNothing,
    DropsInFlight,
    Hooks,
    KeepsDeadLetters,
    Polling,
    Positioned,
    Renewable,
    RunState,
    Transactional,
    run,
)
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


class _PollingSource(_PositionedSource):
    """Batches handed out one poll at a time (None once there is none left), from the last commit again on rewind."""

    def __init__(self, frame: pl.DataFrame, *, batch_size: int) -> None:
        super().__init__(frame, batch_size=batch_size)
        self.batches, self.at, self.committed = list(self.iter_batches()), 0, 0
        self.calls.clear()

    def poll(self, timeout_ms: int | None = None) -> Batch | None:
        if self.at == len(self.batches):
            self.calls.append("poll None")
            return None
        self.at += 1
        return self.batches[self.at - 1]

    def commit_positions(self, positions: dict[Any, int]) -> None:
        self.calls.append(f"commit_positions {positions}")
        self.committed = positions["p"]

    def rewind(self, stopping: Any = None) -> dict[Any, int]:
        self.calls.append(f"rewind to {self.committed}")
        self.at = sum(b.start < self.committed for b in self.batches)
        return {"p": self.committed}


class _AcknowledgingSink(_Sink):
    """Outputs acknowledged one batch late (the last on flush); the write of ``fail_at`` fails once."""

    def __init__(self, calls: list[str], fail_at: int | None = None) -> None:
        super().__init__(calls)
        self.fail_at, self.in_flight = fail_at, list[dict[Any, int]]()

    def write(self, scored: pl.DataFrame, batch: Batch | None = None) -> None:
        assert batch is not None
        if batch.start == self.fail_at:
            self.fail_at = None
            raise BackToLastCommit("outputs not acknowledged")
        super().write(scored, batch)
        self.in_flight.append(batch.position)

    def done_positions(self) -> dict[Any, int]:
        done, self.in_flight = self.in_flight[:-1], self.in_flight[-1:]
        return done[-1] if done else {}

    def flush(self) -> None:
        super().flush()
        self.in_flight.append({})  # everything before it is acknowledged now

    def reset(self) -> int:
        self.calls.append("reset")
        dropped, self.in_flight = len(self.in_flight), []
        return dropped

    def settle_uncertain(self, committed: dict[Any, int]) -> None:
        self.calls.append(f"settle_uncertain {committed}")


class _Hooks(Hooks):
    def __init__(self, calls: list[str], *, idle: int = 2) -> None:
        self.calls, self.idle = calls, idle

    def started(self) -> None:
        self.calls.append("started")

    def before(self, batch: Batch, state: RunState) -> None:
        self.calls.append(f"before {batch.start}")

    def between(self, batch: Batch | None, state: RunState) -> bool:
        self.idle -= batch is None
        return self.idle > 0

    def recovered(self, failure: BackToLastCommit) -> None:
        self.calls.append(f"recovered: {failure}")


def test_a_polling_run_commits_what_its_sink_acknowledged_and_ends_when_its_hooks_say(
    model: Model, new_records: pl.DataFrame
) -> None:
    source = _PollingSource(new_records.head(300), batch_size=100)
    sink = _AcknowledgingSink(source.calls)
    assert isinstance(source, Polling) and isinstance(sink, Acknowledging) and isinstance(sink, DropsInFlight)
    written: list[int] = []
    state = run(
        source,
        model,
        sink,
        RunState.start(model),
        hooks=_Hooks(source.calls),
        on_batch=lambda b, s: written.append(b.start),
    )
    assert source.calls == [
        "open",
        "started",
        *["before 0", "write 0"],
        *["before 100", "write 100", "commit_positions {'p': 100}"],  # batch 0 acknowledged
        *["before 200", "write 200", "commit_positions {'p': 200}"],
        *["poll None", "poll None"],  # the hooks end the run on the second empty poll
        *["flush", "commit_positions {'p': 300}"],  # the rest, once the sink flushed
        "close",
    ]
    assert written == [0, 100, 200] and state.rows == 300 and sink.closed
    assert_frame_equal(sink.frame(), model.score(new_records.head(300), state=model.new_state()))


def test_a_polling_run_goes_back_to_its_last_commit_when_outputs_may_be_lost(
    model: Model, new_records: pl.DataFrame
) -> None:
    source = _PollingSource(new_records.head(400), batch_size=100)
    sink = _AcknowledgingSink(source.calls, fail_at=200)
    run(source, model, sink, RunState.start(model), hooks=_Hooks(source.calls))
    assert source.calls[source.calls.index("before 200") :] == [
        "before 200",  # its write fails: batch 100 was written, not acknowledged
        "reset",
        "rewind to 100",
        "settle_uncertain {'p': 100}",
        "recovered: outputs not acknowledged",
        *["before 100", "write 100"],  # from the last commit again
        *["before 200", "write 200", "commit_positions {'p': 200}"],
        *["before 300", "write 300", "commit_positions {'p': 300}"],
        *["poll None", "poll None", "flush", "commit_positions {'p': 400}", "close"],
    ]
    # a source without positions cannot go back: the failure is raised, the sink aborted
    with pytest.raises(BackToLastCommit):
        run(_Polling(new_records.head(300)), model, _AcknowledgingSink([], fail_at=0), RunState.start(model))


class _Polling(FrameSource):
    def __init__(self, frame: pl.DataFrame) -> None:
        super().__init__(frame, batch_size=100)
        self.batches = list(super().iter_batches())

    def poll(self, timeout_ms: int | None = None) -> Batch | None:
        return self.batches.pop(0) if self.batches else None


def test_kafka_s_source_and_sink_have_what_a_stream_s_run_asks_for(model: Model) -> None:
    """`segscope stream` is `run` over these two: by capability, checked here without a broker (nothing connects
    before `open`)."""
    from segscope.sinks.kafka import KafkaSink
    from segscope.sources.kafka import KafkaSource

    source = KafkaSource(bootstrap="localhost:1", topic="in", group="g", schema=model.input_schema())
    sink = KafkaSink(bootstrap="localhost:1", topic="out", dead_letter_topic="in.dlq")
    assert all(isinstance(source, kind) for kind in (Polling, Positioned, Renewable))
    assert all(isinstance(sink, kind) for kind in (Acknowledging, DropsInFlight, KeepsDeadLetters, Transactional))
    assert sink.transactional_id is None  # at-least-once: the sink's acknowledgements decide the commits


def test_a_run_that_ends_at_once_still_waits_for_its_warm_up_before_the_interpreter_finalizes(
    model: Model, tmp_path: Path
) -> None:
    """The warm-up scores in Polars, Arrow and Numba: a thread still in their C++ frames when the interpreter
    finalizes is ended by pthread_exit there, which aborted the process (SIGABRT after a one-line error)."""
    import subprocess
    import sys

    model.save(tmp_path / "bundle")
    script = f"""
import atexit, sys
from segscope import Model
from segscope.model.watcher import warm_up
thread = warm_up(Model.load({str(tmp_path / "bundle")!r}, trusted=True), threads=1)
atexit.register(lambda: print("warm-up alive at exit:", thread.is_alive()))
sys.exit(2)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "warm-up alive at exit: False" in done.stdout


class _Ahead(_Hooks):
    """Hooks that let the run score ahead, and see whether anything is being scored when they run."""

    def __init__(self, calls: list[str], scoring: list[int]) -> None:
        super().__init__(calls)
        self.scoring, self.overlapped = scoring, list[str]()

    def score_ahead(self) -> bool:
        return True

    def before(self, batch: Batch, state: RunState) -> None:
        if self.scoring:
            self.overlapped.append(f"before {batch.start}")
        super().before(batch, state)

    def between(self, batch: Batch | None, state: RunState) -> bool:
        if self.scoring:
            self.overlapped.append(f"between {batch.start if batch is not None else None}")
        return super().between(batch, state)


class _Timed:
    """The model, scored slowly and counted while it scores (the run finds its model at ``.model``)."""

    def __init__(self, model: Model, scoring: list[int]) -> None:
        self.inner, self.scoring = model, scoring

    @property
    def model(self) -> Any:
        return self

    def score(self, frame: pl.DataFrame, **kwargs: Any) -> pl.DataFrame:
        import time

        self.scoring.append(1)
        try:
            time.sleep(0.05)  # long enough for the loop to poll, write and commit meanwhile
            return self.inner.score(frame, **kwargs)
        finally:
            self.scoring.pop()


class _Waits(_PollingSource):
    """Records how long each poll could wait (None: the source's own wait)."""

    def __init__(self, frame: pl.DataFrame) -> None:
        super().__init__(frame, batch_size=100)
        self.waits = list[int | None]()

    def poll(self, timeout_ms: int | None = None) -> Batch | None:
        self.waits.append(timeout_ms)
        return super().poll(timeout_ms)


def test_a_polling_run_scoring_ahead_writes_every_batch_once_in_order_as_it_would_one_by_one(
    model: Model, new_records: pl.DataFrame
) -> None:
    records = new_records.head(400)
    scoring: list[int] = []
    source = _Waits(records)
    sink = _AcknowledgingSink(source.calls)
    hooks = _Ahead(source.calls, scoring)
    written: list[int] = []
    state = run(
        source, _Timed(model, scoring), sink, RunState.start(model), hooks=hooks,  # type: ignore[arg-type]
        on_batch=lambda b, s: written.append(b.start),
    )  # fmt: skip
    assert written == [0, 100, 200, 300] and state.rows == 400 and sink.closed
    assert [c for c in source.calls if c.startswith("write")] == ["write 0", "write 100", "write 200", "write 300"]
    # batch 100 is handed to the scoring thread before batch 0 is written: the two overlap
    assert source.calls.index("before 100") < source.calls.index("write 0")
    assert hooks.overlapped == [], "the hooks ran while a batch was being scored"
    assert source.calls[-3:] == ["flush", "commit_positions {'p': 400}", "close"]
    assert hooks.drain is None  # the run took its drain back
    # with a batch handed to the scoring thread the next poll takes only what is there (a quiet topic does not hold
    # its outputs back); with none, the source's own wait: the four batches, then nothing left with 300 ahead
    assert source.waits[:6] == [None, 0, 0, 0, 0, None]
    assert_frame_equal(sink.frame(), model.score(records, state=model.new_state()))


def test_a_polling_run_scoring_ahead_drops_the_batch_ahead_when_it_goes_back_to_its_last_commit(
    model: Model, new_records: pl.DataFrame
) -> None:
    records = new_records.head(500)
    source = _PollingSource(records, batch_size=100)
    sink = _AcknowledgingSink(source.calls, fail_at=200)
    scoring: list[int] = []
    run(source, _Timed(model, scoring), sink, RunState.start(model), hooks=_Ahead(source.calls, scoring))  # type: ignore[arg-type]
    after = source.calls[source.calls.index("reset") - 1 :]
    # batch 300 was scored ahead when the write of 200 failed: it is not written before the rewind, and every batch
    # from the last commit on is written once more, in order
    assert after[:5] == [
        "before 300",
        "reset",
        "rewind to 100",
        "settle_uncertain {'p': 100}",
        "recovered: outputs not acknowledged",
    ]
    writes = [c for c in after if c.startswith("write")]
    assert writes == ["write 100", "write 200", "write 300", "write 400"]
    assert source.calls[-3:] == ["flush", "commit_positions {'p': 500}", "close"]


class _Revoking(_PollingSource):
    """Partitions leave during the poll of the batch at ``revoke_at``: the hooks' drain is called from inside it (as
    the stream's revocation callback does)."""

    def __init__(self, frame: pl.DataFrame, hooks: Hooks, revoke_at: int) -> None:
        super().__init__(frame, batch_size=100)
        self.hooks, self.revoke_at = hooks, revoke_at

    def poll(self, timeout_ms: int | None = None) -> Batch | None:
        if self.at < len(self.batches) and self.batches[self.at].start == self.revoke_at:
            assert self.hooks.drain is not None
            self.calls.append("revoked")
            self.hooks.drain()
        return super().poll(timeout_ms)


def test_partitions_leaving_write_the_batch_scored_ahead_first(model: Model, new_records: pl.DataFrame) -> None:
    calls: list[str] = []
    scoring: list[int] = []
    hooks = _Ahead(calls, scoring)
    source = _Revoking(new_records.head(300), hooks, revoke_at=200)
    source.calls = hooks.calls = calls
    sink = _AcknowledgingSink(calls)
    run(source, _Timed(model, scoring), sink, RunState.start(model), hooks=hooks)  # type: ignore[arg-type]
    # batch 100 was being scored when the poll of batch 200 gave partitions up: it is written then, and only then
    assert calls[calls.index("revoked") :][:3] == ["revoked", "write 100", "commit_positions {'p': 100}"]
    assert [c for c in calls if c.startswith("write")] == ["write 0", "write 100", "write 200"]
    assert hooks.overlapped == []
