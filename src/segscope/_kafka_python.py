"""The kafka-python client (pure Python) behind the interface of :mod:`segscope._kafka`, for ``--client
kafka-python``; loaded only when that client is chosen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segscope._deps import require
from segscope._kafka_outcomes import TP, Acknowledges, Deliveries, Headers, Origin, Polled
from segscope._kafka_setup import Connects, Contact, log_commit_failure, python_client
from segscope.exceptions import SourceError


def _kafka_python() -> Any:
    return require("kafka", extra="kafka", feature="Kafka streaming (kafka-python)")


class _PythonConsumer(Connects, Acknowledges):
    def __init__(self, config: dict[str, Any], contact: Contact, connect_timeout: float) -> None:
        self.kafka = _kafka_python()
        from kafka.structs import TopicPartition

        self.tp, self.contact, self.connect_timeout = TopicPartition, contact, connect_timeout
        self.held: dict[TP, int] | None = None  # the positions asked to be committed while partitions are revoked
        self.consumer = python_client(lambda: self.kafka.KafkaConsumer(**config), contact.bootstrap, connect_timeout)

    def _topics(self, timeout: float) -> set[str] | None:
        return set(self.consumer.topics())

    def subscribe(self, topic: str, on_revoke: Callable[[list[TP]], None] | None = None) -> None:
        kafka, owner = self.kafka, self

        class Listener(kafka.AsyncConsumerRebalanceListener):  # type: ignore[misc, name-defined]
            # kafka-python calls the listener on its IO thread, where a blocking commit raises: the commits that
            # ``on_revoke`` makes are held, then awaited on that thread's loop before the partitions leave
            async def on_partitions_revoked(self, revoked: Any) -> None:
                if on_revoke is None:
                    return
                owner.held = {}
                try:
                    on_revoke([(p.topic, p.partition) for p in revoked])
                finally:
                    held, owner.held = owner.held, None
                if held:
                    await owner._commit_on_loop(held)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                return None

        self.consumer.subscribe([topic], listener=Listener())
        # Fetch the topic's partitions now: kafka-python joins with the metadata it has, so a first join before the
        # metadata names the partitions hands out none, and the rejoin that follows can strand the assignment (its
        # coordinator stops awaiting a join a short poll left in flight once the metadata matches).
        self.consumer.topics()

    def assign_all(self, topic: str) -> None:
        self.consumer.assign([self.tp(topic, p) for p in self.partitions(topic)])

    def poll(self, max_records: int, timeout: float) -> Polled | None:
        from kafka.errors import UnsupportedCodecError

        try:
            batch = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except UnsupportedCodecError as exc:
            raise SourceError(
                f"a message is compressed with a codec kafka-python cannot read here ({exc}); install the codecs "
                "with pip install 'segscope[kafka]', or use --client confluent"
            ) from None
        messages = [m for records in batch.values() for m in records]
        if not messages:
            return None

        def origin(i: int) -> Origin:
            m = messages[i]
            return m.topic, m.partition, m.offset, m.timestamp

        return Polled(
            [m.value for m in messages],
            [m.key for m in messages],
            [m.headers or () for m in messages],
            origin,
            self.positions(),
        )

    def positions(self) -> dict[TP, int]:
        return {(tp.topic, tp.partition): self.consumer.position(tp) for tp in self.consumer.assignment()}

    def commit(self, offsets: dict[TP, int]) -> None:
        if not offsets:
            return
        if self.held is not None:  # in the rebalance listener, on kafka-python's IO thread: it makes the commit
            self.held.update(offsets)
            return
        self.consumer.commit(self._offsets(offsets))
        self.acknowledge(offsets)  # synchronous: confirmed once it returns

    async def _commit_on_loop(self, offsets: dict[TP, int]) -> None:
        """A commit awaited on kafka-python's IO loop; a failure is logged, as :meth:`commit`'s caller does."""
        try:
            await self.consumer.commit_async(self._offsets(offsets))
        except Exception as exc:  # a rebalance or a coordinator moving: the next owner reads them again
            log_commit_failure(str(exc).splitlines()[0])
        else:
            self.acknowledge(offsets)

    def _offsets(self, offsets: dict[TP, int]) -> dict[Any, Any]:
        from kafka.structs import OffsetAndMetadata

        return {self.tp(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}

    def committed(self, parts: list[TP]) -> dict[TP, int]:
        out = {}
        for t, p in parts:
            offset = self.consumer.committed(self.tp(t, p))
            out[(t, p)] = -1 if offset is None else int(offset)
        return out

    def watermarks(self, parts: list[TP], cached: bool = False) -> dict[TP, tuple[int, int]]:
        """(first, end) offset of each partition (always asked: kafka-python's answer comes at once)."""
        tps = [self.tp(t, p) for t, p in parts]
        first, end = self.consumer.beginning_offsets(tps), self.consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): (int(first[tp]), int(end[tp])) for tp in tps}

    def partitions(self, topic: str, timeout: float = 10.0) -> list[int]:
        self.consumer.topics()  # refresh metadata (kafka-python's own time-outs)
        return sorted(self.consumer.partitions_for_topic(topic) or ())

    def assignment(self) -> list[TP]:
        return [(tp.topic, tp.partition) for tp in self.consumer.assignment()]

    def seek(self, offsets: dict[TP, int]) -> None:
        for (t, p), o in offsets.items():
            self.consumer.seek(self.tp(t, p), o)

    def group_metadata(self) -> Any:
        return self.consumer.group_metadata()

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class _PythonProducer(Connects):
    def __init__(self, config: dict[str, Any], contact: Contact, connect_timeout: float) -> None:
        self.kafka = _kafka_python()
        self.contact, self.connect_timeout = contact, connect_timeout
        self.producer = python_client(lambda: self.kafka.KafkaProducer(**config), contact.bootstrap, connect_timeout)

    def _topics(self, timeout: float) -> set[str] | None:
        return set()  # connected in the constructor

    def callback(self, deliveries: Deliveries, kind: str) -> Any:
        def report(error: str | None, permanent: bool, value: bytes | None) -> None:
            deliveries.pending -= 1
            if error is not None:
                deliveries.failure(kind, error, permanent, value)

        return report

    def produce_all(
        self, topic: str, values: list[bytes], keys: list[bytes | None], headers: list[Headers], callback: Any
    ) -> None:
        for value, key, extra in zip(values, keys, headers, strict=True):
            self.produce(topic, value, key, extra, callback)

    def produce(self, topic: str, value: bytes | None, key: bytes | None, headers: Headers, callback: Any) -> None:
        from kafka.errors import KafkaError

        kept = [(k, v if v is not None else b"") for k, v in headers]
        try:
            future = self.producer.send(topic, value=value, key=key, headers=kept)
        except KafkaError as exc:  # refused before sending (e.g. larger than max_request_size)
            callback(str(exc), True, value)
            return
        future.add_callback(lambda _: callback(None, False, None))
        future.add_errback(lambda exc: callback(str(exc), not getattr(exc, "retriable", False), value))

    def poll(self, timeout: float = 0.0) -> None:
        return None

    def flush(self, timeout: float) -> int:
        try:
            self.producer.flush(timeout=timeout)
        except self.kafka.errors.KafkaTimeoutError:
            return 1
        return 0

    def init_transactions(self, timeout: float = 60.0) -> None:
        self.producer.init_transactions()

    def begin(self) -> None:
        self.producer.begin_transaction()

    def send_offsets(self, offsets: dict[TP, int], group_metadata: Any) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        request = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        self.producer.send_offsets_to_transaction(request, group_metadata)

    def commit(self) -> None:
        self.producer.commit_transaction()

    def abort(self) -> None:
        self.producer.abort_transaction()

    def close(self) -> None:
        self.producer.close(timeout=30)

    def discard(self) -> None:
        self.producer.close(timeout=0)


# ------------------------------------------------------------------------------------------ factories
#: Also the group's rebalance timeout: after a broker restart the coordinator can hold a rejoining member's
#: JoinGroup that long (waiting for a member that will not come back), and the stream gets no partitions
#: meanwhile: 300 s (the clients' default) stalled a stream for minutes; a batch takes well under a second.
