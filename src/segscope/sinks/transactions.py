"""Kafka transactions through broker outages: which answer each error of a transactional call needs, and a new
transactional producer started while the broker may still be away.

The client tells three kinds of errors apart (librdkafka's ``retriable``, ``txn_requires_abort`` and ``fatal``;
kafka-python's exception classes): a *retriable* one (a time-out, a coordinator moving) is asked again, for a
while; one that *requires an abort* (outputs not delivered in time, a rebalance that fenced the consumer
positions) aborts the transaction, and the batch is processed again from the committed positions; a *fatal* one
(the coordinator aborted a transaction that outlived its time-out and fenced the producer, a state the outage
left the producer in) needs a new producer under the same transactional id, whose ``init_transactions`` fences
the old one and aborts whatever it left open. Every wait is bounded; waiting for the broker to come back is
asking again, with a line every minute, until it answers or the stream is told to stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Literal, Protocol

from segscope.exceptions import SinkError

__all__ = ["CALL_WAIT", "RETRY_FOR", "TxnFailed", "bounded", "call", "first_line", "start", "verdict"]

log = logging.getLogger("segscope.stream")

#: How long a call whose error the client calls retriable is asked again, in seconds.
RETRY_FOR = 30.0
#: Each wait of a new producer's init_transactions for a broker that is away, in seconds.
WAIT_STEP = 10.0
#: The longest a transactional call may take before its producer is given up (the client's own time-outs are
#: 10 s), in seconds.
CALL_WAIT = 15.0

Verdict = Literal["retry", "abort", "fatal"]


class _Transactional(Protocol):
    def init_transactions(self, timeout: float = 60.0) -> None: ...

    def discard(self) -> None: ...


class TxnFailed(Exception):
    """A transaction that cannot commit: ``fatal`` when its producer cannot go on either."""

    def __init__(self, reason: str, fatal: bool) -> None:
        super().__init__(reason)
        self.reason, self.fatal = reason, fatal


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def verdict(exc: BaseException) -> Verdict:
    """What an error of a transactional call needs: "retry" (call again), "abort" (abort, go back to the last
    commit, process again) or "fatal" (a new producer)."""
    error: Any = exc.args[0] if exc.args else None
    if hasattr(error, "txn_requires_abort"):  # confluent-kafka's KafkaError
        if error.fatal():
            return "fatal"
        if error.retriable():
            return "retry"
        return "abort" if error.txn_requires_abort() else "fatal"
    fatal = ("ProducerFencedError", "InvalidProducerEpochError", "TransactionalIdAuthorizationFailedError")
    return "fatal" if type(exc).__name__ in fatal else "abort"


def bounded(operation: Callable[[], Any], seconds: float) -> Any:
    """``operation()``, waited for at most ``seconds``. librdkafka can wait without end for a group coordinator
    that a broker restart left behind, whatever time-out it was given (``send_offsets_to_transaction``: its
    issues 5456 and 5511); such a call is left to itself in its thread (it keeps its producer alive, which a new
    producer with the same transactional id fences) and reported as fatal: a new producer takes over."""
    done, outcome = threading.Event(), {}

    def run() -> None:
        try:
            outcome["value"] = operation()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="segscope-transaction", daemon=True).start()
    if not done.wait(seconds):
        raise TxnFailed(f"the Kafka client did not answer a transactional call in {seconds:.0f} s", True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def call(operation: Callable[[], None]) -> None:
    """A transactional call, asked again while its error is retriable (for :data:`RETRY_FOR` seconds), each
    attempt waited for at most :data:`CALL_WAIT` seconds (:func:`bounded`)."""
    deadline = time.monotonic() + RETRY_FOR
    while True:
        try:
            bounded(operation, CALL_WAIT)
            return
        except TxnFailed:
            raise
        except Exception as exc:
            kind = verdict(exc)
            if kind == "retry" and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise TxnFailed(first_line(exc), kind == "fatal") from None


def start(make: Callable[[], Any], stopping: Callable[[], bool]) -> Any:
    """A new transactional producer (``make()``) once its ``init_transactions`` succeeds: asked again in waits
    of :data:`WAIT_STEP` seconds while the broker is away; a producer that cannot go on is replaced."""
    started, said = time.monotonic(), 0.0
    while True:
        producer: _Transactional = make()
        while True:
            try:
                bounded(partial(producer.init_transactions, WAIT_STEP), CALL_WAIT)
                if said:
                    log.warning("the broker accepted the new producer after %.0f s", time.monotonic() - started)
                return producer
            except Exception as exc:
                kind, reason = verdict(exc), first_line(exc)
            if stopping():
                producer.discard()
                raise SinkError(
                    f"stopped while the broker was away ({reason}); nothing past the last commit was committed, "
                    "and a restart resumes there"
                )
            if time.monotonic() - said >= 60:
                said = time.monotonic()
                log.warning("waiting for the broker to accept a new transactional producer (%s)", reason)
            if kind != "retry":
                break
        producer.discard()
        time.sleep(1.0)
