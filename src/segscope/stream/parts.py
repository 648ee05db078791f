"""The pieces the stream loop uses besides its source and sink: the model it scores with (and hot-swaps), the
Prometheus metrics, the labels topic, the transactional id of an exactly-once process, and the signal handlers."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segscope._deps import require
from segscope.exceptions import DataError
from segscope.labels.parse import LabelIn, label_from_message
from segscope.labels.store import LabelStore
from segscope.model.watcher import ModelWatcher
from segscope.sinks.kafka import KafkaSink
from segscope.sources.base import DeadLetter
from segscope.sources.kafka import TopicReader
from segscope.unsupervised.drift import DriftReport

__all__ = ["Interrupted", "Metrics", "ModelWatcher", "consume_labels", "stop_on_signals", "transactional_id"]

log = logging.getLogger("segscope.stream")


class Metrics:
    """Prometheus counters and gauges on 127.0.0.1:``port`` (nothing without a port)."""

    def __init__(self, port: int | None) -> None:
        self.enabled = port is not None
        if not self.enabled:
            return
        prom = require("prometheus_client", extra="kafka", feature="the metrics endpoint")
        registry_ = prom.CollectorRegistry()
        self.records_in = prom.Counter("segscope_records_in", "Messages consumed", registry=registry_)
        self.records_out = prom.Counter("segscope_records_out", "Scored records written", registry=registry_)
        self.alerts = prom.Counter("segscope_alerts", "Alerts produced", registry=registry_)
        self.dead = prom.Counter(
            "segscope_dead_letters", "Messages that could not be scored, dead-lettered", registry=registry_
        )
        self.refused = prom.Counter(
            "segscope_refused_outputs",
            "Scored records the output topic refused (too large), dead-lettered in their place",
            registry=registry_,
        )
        self.lag = prom.Gauge("segscope_consumer_lag", "Messages behind the end of the topic", registry=registry_)
        self.batch_seconds = prom.Histogram("segscope_batch_seconds", "Time per micro-batch", registry=registry_)
        self.version = prom.Info("segscope_model", "The model version scoring", registry=registry_)
        self.alert_rate = prom.Gauge("segscope_alert_rate", "Alert rate in the last stats window", registry=registry_)
        self.expected_rate = prom.Gauge(
            "segscope_expected_alert_rate", "Alert rate the policy expects (on the fit data)", registry=registry_
        )
        self.psi = prom.Gauge(
            "segscope_drift_psi", "Population stability index vs the fit data", ["column"], registry=registry_
        )
        self.outside = prom.Gauge(
            "segscope_drift_outside_share", "Share of values outside the fit range", ["column"], registry=registry_
        )
        self.unseen = prom.Gauge(
            "segscope_drift_unseen_share", "Share of categories never seen at fit", ["column"], registry=registry_
        )
        prom.start_http_server(port, addr="127.0.0.1", registry=registry_)

    def drift(self, report: DriftReport) -> None:
        if not self.enabled:
            return
        self.alert_rate.set(report.alert_rate)
        if report.expected_alert_rate is not None:
            self.expected_rate.set(report.expected_alert_rate)
        for column in report.columns:
            self.psi.labels(column.name).set(column.psi)
            self.outside.labels(column.name).set(column.outside)
            self.unseen.labels(column.name).set(column.unseen)


class Interrupted(BaseException):
    """SIGTERM or SIGINT while the stream connects: there is nothing to finish, so it stops at once (a client may
    be waiting inside its constructor, which no flag reaches)."""


def _ignore(unraisable: Any) -> None:
    """An unraisable exception not shown (see :func:`stop_on_signals`)."""


def stop_on_signals(state: dict[str, bool]) -> None:
    """SIGTERM/SIGINT end the loop after the current batch; while ``state["connecting"]``, at once."""

    def handler(signum: int, frame: Any) -> None:
        state["running"] = False
        if state.get("connecting"):
            log.info("signal %s while connecting to Kafka: exiting", signum)
            # the client left inside its constructor may complain as it is collected at exit (kafka-python's
            # I/O loop: "Exception ignored ... ReferenceError"): nothing was read, so its finalizers stay quiet
            sys.unraisablehook = _ignore
            raise Interrupted
        log.info("signal %s: finishing the current batch, committing, exiting", signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


_SLOTS: list[int] = []  # lock files held for the life of the process


def transactional_id(group: str, topic: str, *, slots: int = 64) -> str:
    """A transactional id that is the same after a restart (so the restarted process fences its dead self and
    aborts its open transaction at once, instead of read_committed readers waiting for it to time out) and
    different for every process of the group on this host: the first free slot, held by a lock file for the
    life of the process (a killed process's lock goes with it)."""
    folder = Path(tempfile.gettempdir()) / "segscope-transactions"
    folder.mkdir(exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{group}.{topic}")
    for slot in range(slots):
        fd = os.open(folder / f"{stem}.{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _SLOTS.append(fd)
        return f"segscope.{group}.{topic}.{socket.gethostname()}.{slot}"
    raise DataError(
        f"more than {slots} exactly-once processes of group {group!r} on this host; pass --transactional-id"
    )


def consume_labels(
    reader: TopicReader, store: LabelStore, sink: KafkaSink, topic: str, eos: bool, stopping: Callable[[], bool]
) -> int:
    """Move what the labels topic holds into the store (source "kafka"); a message that is not a valid label for a
    stored record is dead-lettered to ``<labels-topic>.dlq`` with the reason (counted by the sink). Committed after
    the store write and the dead letters (re-adding a label is a no-op, so labels read again are stored once).
    Returns the labels taken."""
    polled = reader.poll()
    if polled is None:
        return 0
    parsed: list[tuple[int, LabelIn]] = []
    dead: list[tuple[int, str]] = []
    for i, value in enumerate(polled.values):
        try:
            parsed.append((i, label_from_message(value)))
        except DataError as exc:
            dead.append((i, str(exc)))
    known = store.records([item.id for _, item in parsed])
    for i, item in parsed:
        if item.id not in known:
            dead.append((i, f"unknown record id {item.id!r}: only records in the store can be labelled"))
    store.add_labels([item for _, item in parsed if item.id in known], source="kafka")
    if dead:
        letters = []
        for i, why in dead:
            topic_, partition, offset, stamp = polled.origin(i)
            key, value, headers = polled.keys[i], polled.values[i], polled.headers[i]
            letters.append(DeadLetter(why, topic_, partition, offset, key, value, stamp, headers))
        if eos:  # a transactional producer writes only inside transactions
            for _ in range(3):
                sink.begin(stopping)
                sink.dead_letters(letters, topic=f"{topic}.dlq")
                if sink.commit_transaction({}, None, stopping):
                    break
            else:
                log.warning("%d dead letters of the labels topic could not be written (aborted 3 times)", len(letters))
        else:
            sink.dead_letters(letters, topic=f"{topic}.dlq")
            sink.flush()
    reader.commit(polled.positions)
    return len(polled) - len(dead)
