"""A consumer that lost every broker, told apart from an outage, and replaced: librdkafka drops every broker a
metadata response does not list, and a broker shutting down or starting lists none, so a client can be left with
no broker after an outage and never look for one again (librdkafka issue 5301): it fetches nothing for good while
its loop runs on. Both of a stream's consumers (the input's and the labels topic's) check for it."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from segscope._kafka import Client

if TYPE_CHECKING:
    from segscope._kafka import _ConfluentConsumer
    from segscope._kafka_python import _PythonConsumer

__all__ = ["STRANDED_CHECK", "Strandable"]

#: How often (seconds) an idle or rewinding member checks that its client still reaches the cluster.
STRANDED_CHECK = 10.0


class Strandable:
    """A reader of ``topic`` whose consumer (``consumer_``, made by ``_consumer()``) may strand; :meth:`stranded`
    tells, :meth:`_replace` puts a new client in its place."""

    client: Client
    topic: str
    consumer_: _ConfluentConsumer | _PythonConsumer

    def _consumer(self) -> _ConfluentConsumer | _PythonConsumer:
        raise NotImplementedError

    def _watch(self) -> None:
        """Start looking (a new client: no check for :data:`STRANDED_CHECK` seconds)."""
        self.suspect_: float | None = None  # when the client was first seen stranded
        self.checked_ = time.monotonic()

    def stranded(self) -> bool:
        """Whether this client has lost the cluster while the cluster answers a new client, at two checks
        :data:`STRANDED_CHECK` seconds apart (checked at most that often; a client back from an outage has
        reconnected by then). Only librdkafka's clients strand this way."""
        now = time.monotonic()
        if self.client != "confluent" or now - self.checked_ < STRANDED_CHECK:
            return False
        self.checked_ = now
        try:
            self.consumer_.partitions(self.topic, timeout=2.0)
            self.suspect_ = None
            return False
        except Exception:  # no answer: an outage, or a client that lost its brokers
            pass
        probe = self._consumer()  # a new client starts from bootstrap.servers
        try:
            answers = bool(probe.partitions(self.topic, timeout=5.0))
        except Exception:
            answers = False
        finally:
            probe.close()
        if not answers:  # the cluster is away: nothing to tell
            self.suspect_ = None
            return False
        if self.suspect_ is None:
            self.suspect_ = now
            return False
        return True

    def _replace(self, new: _ConfluentConsumer | _PythonConsumer) -> None:
        """``new`` in place of the stranded client, which is closed in the background (closing waits for a
        coordinator it cannot find)."""
        old, self.consumer_ = self.consumer_, new
        self._watch()
        threading.Thread(target=old.close, name="segscope-stranded-consumer", daemon=True).start()
