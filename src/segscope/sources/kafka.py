"""A Kafka topic as a source: a consumer in a group, each poll a :class:`~segscope.sources.base.Batch`.

Every message becomes exactly one of a valid record or a dead letter (:mod:`segscope.sources.messages`).

The consumer reads ``read_committed`` by default (records of aborted or open transactions are never scored) and
:meth:`KafkaSource.commit` commits the consumer's positions after a batch, past transaction markers, so a
group's lag reaches 0 on transactional input. (``extra: kafka``)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from segscope._kafka import TP, Client, Polled, log_commit_failure, make_consumer
from segscope._kafka_setup import KafkaSettings
from segscope.exceptions import SourceError
from segscope.schema import FeatureSchema
from segscope.sources.base import Batch
from segscope.sources.messages import decode
from segscope.sources.stranding import STRANDED_CHECK, Strandable
from segscope.sources.wire import WireDecoder

if TYPE_CHECKING:
    from segscope._kafka import _ConfluentConsumer
    from segscope._kafka_python import _PythonConsumer

__all__ = ["STRANDED_CHECK", "KafkaSource", "TopicReader"]

log = logging.getLogger("segscope.stream")


class KafkaSource(Strandable):
    """A topic consumed in a consumer group; :meth:`poll` returns the next :class:`Batch` (or None)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        schema: FeatureSchema,
        batch_size: int = 5000,
        max_message_bytes: int = 65_536,
        poll_timeout_ms: int = 100,
        read_committed: bool = True,
        client: Client = "confluent",
        wire: WireDecoder | None = None,
        settings: KafkaSettings | None = None,
        on_revoke: Callable[[list[TP]], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.schema = schema
        self.on_revoke = on_revoke
        self.wire = wire
        self.batch_size = batch_size
        self.max_message_bytes = max_message_bytes
        self.poll_timeout_ms = poll_timeout_ms
        self.read_committed = read_committed
        self.client = client
        self.settings = settings

    def open(self, on_revoke: Callable[[list[TP]], None] | None = None) -> None:
        """Connect (a bounded wait: an unreachable cluster, refused credentials or a missing topic is one line),
        then join the group; ``on_revoke`` (or the one given at construction) hears of partitions leaving."""
        self.on_revoke_ = on_revoke or self.on_revoke
        self.asked_: dict[TP, int] = {}  # the last position handed to a commit, per partition of this member
        self._watch()
        self.consumer_ = self._consumer()
        self.consumer_.reach(self.topic, "--in-topic")
        self._subscribe()

    def _consumer(self) -> _ConfluentConsumer | _PythonConsumer:
        return make_consumer(
            self.client,
            bootstrap=self.bootstrap,
            group=self.group,
            batch_size=self.batch_size,
            read_committed=self.read_committed,
            settings=self.settings,
        )

    def _subscribe(self) -> None:
        consumer = self.consumer_

        def revoked(parts: list[TP]) -> None:  # a replaced client's revocations are no longer this member's
            if consumer is self.consumer_ and self.on_revoke_ is not None:
                self.on_revoke_(parts)

        consumer.subscribe(self.topic, revoked)

    def renew(self) -> None:
        """A new client in place of a stranded one (:meth:`stranded`); it joins the group and starts at the
        committed positions."""
        self._replace(self._consumer())
        self.asked_ = {}  # the new client starts at the group's commits
        self._subscribe()

    def poll(self, timeout_ms: int | None = None) -> Batch | None:
        timeout = (self.poll_timeout_ms if timeout_ms is None else timeout_ms) / 1000
        polled = self.consumer_.poll(self.batch_size, timeout)
        if polled is None:
            return None
        return decode(polled, self.schema, max_bytes=self.max_message_bytes, wire=self.wire)

    def iter_batches(self) -> Iterator[Batch]:
        while True:
            batch = self.poll()
            if batch is not None:
                yield batch

    def commit(self, batch: Batch) -> None:
        self.commit_positions(batch.position or {})

    def commit_positions(self, positions: dict[TP, int]) -> None:
        """Commit positions; a failure (a rebalance, a restarting coordinator) is safe: the records come again
        with the same ids, and the next commit covers them, so it is logged, never raised."""
        self.asked_.update(positions)
        try:
            self.consumer_.commit(positions)
        except Exception as exc:
            log_commit_failure(str(exc).splitlines()[0])

    def recommit(self) -> int:
        """Commit again the positions of this member's partitions whose last commit the broker has not confirmed
        (lost in an outage or refused): an idle stream has no next commit to cover them, and the group would stay
        short of the end until another record came. Safe at-least-once: only positions whose outputs were
        acknowledged are ever handed to a commit, and only where this member still reads the partition at that
        position (one that left and came back, from another member's commit or to be read again, is not the
        position's to commit). Returns how many partitions were committed again."""
        confirmed, at_now = self.consumer_.highest_acknowledged(), self.consumer_.positions()
        lost = {tp: at for tp, at in self.asked_.items() if confirmed.get(tp, -1) < at and at_now.get(tp) == at}
        if lost:
            self.commit_positions(lost)
        return len(lost)

    def confirmed(self) -> dict[TP, int]:
        """Positions whose commit the broker confirmed since the last call (a commit is asynchronous: what is
        handed to :meth:`commit_positions` may still be lost, and the group resume before it)."""
        return self.consumer_.take_acknowledged()

    def group_metadata(self) -> Any:
        """What a transactional producer needs to commit this consumer's positions (KIP-447 fencing)."""
        return self.consumer_.group_metadata()

    def rewind(self, stopping: Callable[[], bool] = lambda: False) -> dict[TP, int]:
        """Go back to the group's committed positions (after an aborted transaction or outputs lost in an outage:
        the records after them come again); returns them. The broker may be away: each wait is bounded (10 s) and
        asked again, with a line every minute, until it answers or ``stopping()``."""
        started, said, renewed = time.monotonic(), 0.0, False
        while True:
            try:
                parts = self.consumer_.assignment()
                if renewed and not parts:  # a new client: the group assigns it the committed positions
                    return self.consumer_.committed([(self.topic, p) for p in self.consumer_.partitions(self.topic)])
                committed = self.consumer_.committed(parts) if parts else {}
                missing = [tp for tp in parts if committed.get(tp, -1) < 0]
                marks = self.consumer_.watermarks(missing) if missing else {}
                target = {tp: committed[tp] if tp not in marks else marks[tp][0] for tp in parts}
                self.consumer_.seek(target)
                if said:
                    log.warning("the committed positions were read after %.0f s", time.monotonic() - started)
                return target
            except Exception as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if stopping():
                raise SourceError(
                    f"stopped while the broker was away ({reason}); nothing past the last commit was committed, "
                    "and a restart resumes there"
                )
            if time.monotonic() - said >= 60:
                said = time.monotonic()
                log.warning("waiting for the broker to read the committed positions (%s)", reason)
            if self.stranded():
                log.warning("the consumer lost the cluster, which answers a new client: a new consumer takes over")
                self.renew()
                renewed = True
            time.sleep(1.0)

    def assigned(self) -> bool:
        """Whether the group gave this member partitions (a joining member may wait for a dead one's session)."""
        return bool(self.consumer_.assignment())

    def lag(self, ask: bool = False) -> int:
        """Records between this member's positions and the ends of its partitions (as the last fetch said: the
        loop is not held up asking; with ``ask``, for a member that consumed nothing lately, the broker is asked:
        a client that stopped fetching keeps the ends its last fetch saw); for a partition with no position yet,
        and for the whole topic while the member has no partitions (a rebalance), from the group's committed
        offsets. -1 when unknown (``ask``: the cluster does not answer this client)."""
        try:
            positions = self.consumer_.positions()
            every = self.consumer_.partitions(self.topic, timeout=2.0) if ask else None  # raises without an answer
            parts = self.consumer_.assignment() or [
                (self.topic, p) for p in every or self.consumer_.partitions(self.topic)
            ]
            unknown = [tp for tp in parts if tp not in positions]
            committed = self.consumer_.committed(unknown) if unknown else {}
            marks = self.consumer_.watermarks(parts, cached=not ask)
            asked = [tp for tp in parts if marks[tp][1] < 0 or (marks[tp][0] < 0 and tp not in positions)]
            marks |= self.consumer_.watermarks(asked) if asked else {}
            behind = 0
            for tp in parts:
                first, end = marks[tp]
                at = positions.get(tp, committed.get(tp, -1))
                behind += max(0, end - (at if at >= 0 else first))  # nothing committed: from the first offset
            return behind
        except Exception:  # lag is informational: never let it stop the stream
            return -1

    def group_done(self, recommit: bool = False) -> bool:
        """Whether the whole group has committed up to the end of every partition of the topic: another member
        dying with work left shows here as lag, even if this member's own partitions are done. With ``recommit``
        (only for an idle member whose outputs are all acknowledged: every record it consumed is written), this
        member's positions are committed again where the group's commits are behind them: a commit lost with the
        last batch would otherwise keep the group short of the end until another record arrives."""
        try:
            parts = [(self.topic, p) for p in self.consumer_.partitions(self.topic)]
            committed = self.consumer_.committed(parts)
            marks = self.consumer_.watermarks(parts)
            positions = self.consumer_.positions() if recommit else {}
        except Exception:  # asked again on the next idle poll
            return False
        if all(max(committed.get(tp, -1), marks[tp][0]) >= marks[tp][1] for tp in parts):
            return bool(parts)
        self.commit_positions({tp: at for tp, at in positions.items() if committed.get(tp, -1) < at})
        return False

    def close(self) -> None:
        if hasattr(self, "consumer_"):
            self.consumer_.close()
        if self.wire is not None:
            self.wire.registry.close()


class TopicReader(Strandable):
    """Every partition of a topic, assigned (no group join to wait for), as raw messages: for small topics every
    process reads whole, such as analyst labels (re-adding a label is a no-op). A client that lost every broker
    (:meth:`stranded`) is replaced by one that starts at the committed positions."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        client: Client = "confluent",
        settings: KafkaSettings | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.client = client
        self.settings = settings

    def _consumer(self) -> _ConfluentConsumer | _PythonConsumer:
        return make_consumer(
            self.client, bootstrap=self.bootstrap, group=self.group, batch_size=5000, settings=self.settings
        )

    def open(self) -> None:
        self.consumer_ = self._consumer()
        self.consumer_.reach(self.topic, "--labels-topic")
        self.consumer_.assign_all(self.topic)
        self._watch()

    def poll(self, max_records: int = 5000) -> Polled | None:
        """The messages there are now (no wait); nothing for :data:`STRANDED_CHECK` seconds and a client that lost
        the cluster while a new one reaches it: the new one takes over (the topic is quiet between labels, so
        that is checked, at most that often, whenever nothing comes)."""
        polled = self.consumer_.poll(max_records, 0.0)
        if polled is None and self.stranded():
            self.renew()
        return polled

    def renew(self) -> None:
        new = self._consumer()
        try:
            new.assign_all(self.topic)  # at the committed positions
        except Exception as exc:  # the cluster stopped answering meanwhile: looked at again later
            new.close()
            log.warning("the labels consumer could not be replaced (%s); tried again later", exc)
            return
        log.warning(
            "the labels consumer (%s) lost the cluster, which answers a new client: a new consumer takes over from "
            "the last commit", self.topic,
        )  # fmt: skip
        self._replace(new)

    def commit(self, positions: dict[TP, int]) -> None:
        try:
            self.consumer_.commit(positions)
        except Exception as exc:
            log.warning("labels commit failed (%s); they are read again, and stored once", exc)

    def close(self) -> None:
        if hasattr(self, "consumer_"):
            self.consumer_.close()
