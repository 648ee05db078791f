"""`segscope stream --format avro|protobuf` against a real broker and a real schema registry (Apicurio Registry,
Confluent's API, with basic auth), fed by confluent-kafka's own serializers: producers segscope does not use."""

from __future__ import annotations

import datetime as dt
import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from segscope.testing.data import make_transactions
from tests.conftest import Registry
from tests.kafka_helpers import consume_all, consume_dead_letters, create_topic, produce, start_stream

#: batch = stream: a stream's floats equal `segscope score`'s to this (both print shortest round-trip JSON)
TOLERANCE = 1e-12

FIELDS = [
    {"name": "txn_id", "type": "string"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "amount", "type": "double"},
    {"name": "merchant_category", "type": "string"},
    {"name": "country", "type": "string"},
    {"name": "card_present", "type": "boolean"},
    {"name": "n_txn_24h", "type": "long"},
    {"name": "distance_km", "type": "double"},
]
V1 = {"type": "record", "name": "Transaction", "namespace": "shop.payments", "fields": FIELDS}
#: v2 adds a field (with a default: a compatible change)
V2 = {**V1, "fields": [*FIELDS, {"name": "channel", "type": "string", "default": "web"}]}


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    rows = frame.to_dicts()
    for row in rows:
        row["ts"] = row["ts"].replace(tzinfo=dt.UTC)
    return rows


def _producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})


def _produce_avro(bootstrap: str, registry: Registry, topic: str, schema: dict[str, Any], rows: list[dict]) -> int:
    """What a Confluent shop's producer does: AvroSerializer registers the schema under <topic>-value."""
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serialize = AvroSerializer(registry.client(), json.dumps(schema))
    producer = _producer(bootstrap)
    context = SerializationContext(topic, MessageField.VALUE)
    for row in rows:
        producer.produce(topic, value=serialize(row, context), key=row["txn_id"].encode())
    producer.flush(60)
    return len(rows)


def _stream(bundle: Path, bootstrap: str, registry: Registry, name: str, *extra: str) -> tuple[int, str]:
    """Run a stream to its idle exit; the registry's basic auth is read from TEST_REGISTRY_AUTH (set by the
    ``registry_auth`` fixture): never on a command line."""
    args = [
        *("--in-topic", f"{name}.in", "--out-topic", f"{name}.out", "--alerts-topic", f"{name}.alerts"),
        *("--dlq-topic", f"{name}.dlq", "--group", f"g-{name}", "--idle-exit", "4", "--stats-interval", "2"),
        *("--schema-registry", registry.url, "--schema-registry-auth", "env:TEST_REGISTRY_AUTH", *extra),
    ]
    proc = start_stream(bundle, bootstrap, *args)
    _, err = proc.communicate(timeout=240)
    assert registry.auth.split(":")[1] not in err  # the secret is never printed
    assert "HTTP Request" not in err  # nor a line per registry request
    return proc.returncode, err


def _batch_scores(run_cli: Any, bundle: Path, frame: pl.DataFrame, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """`segscope score` of the same records as a file."""
    frame.write_parquet(tmp_path / "same.parquet")
    result = run_cli("score", tmp_path / "same.parquet", "--bundle", bundle, "--out", tmp_path / "scored.ndjson")
    assert result.code == 0, result.err
    return {r["txn_id"]: r for r in map(json.loads, (tmp_path / "scored.ndjson").read_text().splitlines())}


def _same_scores(streamed: list[dict[str, Any]], batch: dict[str, dict[str, Any]]) -> None:
    assert {r["txn_id"] for r in streamed} == set(batch)
    for record in streamed:
        expected = batch[record["txn_id"]]
        for column in ("score", "anomaly_score"):
            assert abs(record[column] - expected[column]) <= TOLERANCE, (column, record, expected)
        assert record["is_alert"] == expected["is_alert"] and record["segment"] == expected["segment"]
        assert [r["feature"] for r in record["reasons"]] == [r["feature"] for r in expected["reasons"]]


@pytest.fixture
def registry_auth(schema_registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("TEST_REGISTRY_AUTH", schema_registry.auth)
    return schema_registry


def test_avro_stream_equals_batch_dead_letters_what_does_not_decode_and_follows_a_new_version(
    kafka_bootstrap: str, registry_auth: Registry, stream_bundle: Path, run_cli: Any, tmp_path: Path
) -> None:
    schema_registry = registry_auth
    name = "avro"
    topic = f"{name}.in"
    create_topic(kafka_bootstrap, topic)
    first, second = make_transactions(2000, seed=21).drop("is_fraud"), make_transactions(1000, seed=22).drop("is_fraud")
    sent = _produce_avro(kafka_bootstrap, schema_registry, topic, V1, _rows(first))
    v2_rows = [{**row, "channel": "app"} for row in _rows(second)]  # v2 adds a field: a new schema id
    sent += _produce_avro(kafka_bootstrap, schema_registry, topic, V2, v2_rows)
    client = schema_registry.client()
    ids = [client.get_latest_version(f"{topic}-value").schema_id, client.get_version(f"{topic}-value", 1).schema_id]
    assert ids[0] != ids[1]
    v1_payload = _one_avro(client, topic)
    poison = {
        "unknown schema id": [b"\x00" + struct.pack(">I", 987_654) + v1_payload[5:]] * 20,
        "corrupt bytes": [v1_payload[:5] + b"\x02\xff\xff\xff"] * 20,  # a string longer than what follows
        "trailing bytes": [v1_payload + b"\x00\x01"] * 20,
        "no magic byte": [b'{"txn_id": "json-in-an-avro-topic", "amount": 1.0}'] * 20,
    }
    sent += produce(kafka_bootstrap, topic, [v for vs in poison.values() for v in vs])

    code, err = _stream(stream_bundle, kafka_bootstrap, schema_registry, name, "--format", "avro")
    assert code == 0, err
    out = consume_all(kafka_bootstrap, f"{name}.out")
    dlq = consume_dead_letters(kafka_bootstrap, f"{name}.dlq")
    assert len(out) + len(dlq) == sent and len(dlq) == 80  # count in = count out + count dead-lettered
    reasons = Counter(d["reason"].split(":")[0] for d in dlq)
    assert reasons["unknown schema id 987654"] == 20
    assert reasons[f"the bytes do not decode with schema id {ids[1]} (Avro)"] == 40  # corrupt, and bytes left over
    assert sum(1 for d in dlq if "are left after the record" in d["reason"]) == 20
    assert reasons["not in the schema registry's wire format"] == 20
    no_magic = [d["reason"] for d in dlq if "magic byte" in d["reason"]]
    assert len(no_magic) == 20 and all("first byte 0x7b" in r and "--format json" in r for r in no_magic)
    assert {d["value"] for d in dlq} == {v for vs in poison.values() for v in vs}  # the original bytes
    # batch = stream, across both schema versions
    _same_scores(out, _batch_scores(run_cli, stream_bundle, pl.concat([first, second]), tmp_path))
    assert Counter(r.get("channel") for r in out) == {None: 2000, "app": 1000}  # v2's new field comes through
    assert all(r["ts"].endswith("+00:00") for r in out)  # the timestamp as ISO-8601 text in the JSON output
    alerts = consume_all(kafka_bootstrap, f"{name}.alerts")
    assert len(alerts) == sum(r["is_alert"] for r in out)


def _one_avro(client: Any, topic: str) -> bytes:
    """One v1 record as the wire format holds it (framed by confluent-kafka's serializer)."""
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    row = _rows(make_transactions(1, seed=23).drop("is_fraud"))[0]
    serialize = AvroSerializer(client, json.dumps(V1), conf={"auto.register.schemas": False})
    return bytes(serialize(row, SerializationContext(topic, MessageField.VALUE)))


PROTO_V2 = """syntax = "proto3";
package shop.payments;
import "google/protobuf/timestamp.proto";

message Header {
  string source = 1;
}

message Transaction {
  string txn_id = 1;
  google.protobuf.Timestamp ts = 2;
  double amount = 3;
  string merchant_category = 4;
  string country = 5;
  bool card_present = 6;
  int64 n_txn_24h = 7;
  double distance_km = 8;
  string channel = 9;
}
"""


def _transaction_class(with_channel: bool) -> Any:
    """The Transaction message (the file's second: message index 1), as generated code would define it."""
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    kind = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="shop/payments.proto",
        package="shop.payments",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    file.message_type.add(name="Header").field.add(name="source", number=1, type=kind.TYPE_STRING)
    message = file.message_type.add(name="Transaction")
    fields = [
        ("txn_id", kind.TYPE_STRING), ("ts", kind.TYPE_MESSAGE), ("amount", kind.TYPE_DOUBLE),
        ("merchant_category", kind.TYPE_STRING), ("country", kind.TYPE_STRING), ("card_present", kind.TYPE_BOOL),
        ("n_txn_24h", kind.TYPE_INT64), ("distance_km", kind.TYPE_DOUBLE),
    ] + ([("channel", kind.TYPE_STRING)] if with_channel else [])  # fmt: skip
    for number, (name, type_) in enumerate(fields, 1):
        field = message.field.add(name=name, number=number, type=type_, label=kind.LABEL_OPTIONAL)
        if name == "ts":
            field.type_name = ".google.protobuf.Timestamp"
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return GetMessageClass(pool.FindMessageTypeByName("shop.payments.Transaction"))


def _message(cls: Any, row: dict[str, Any]) -> Any:
    message = cls(**{k: v for k, v in row.items() if k != "ts"})
    message.ts.FromDatetime(row["ts"])
    return message


def test_protobuf_stream_equals_batch_from_serialized_and_proto_text_schemas(
    kafka_bootstrap: str, registry_auth: Registry, stream_bundle: Path, run_cli: Any, tmp_path: Path
) -> None:
    from confluent_kafka.schema_registry import Schema, prefix_schema_id_serializer
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.schema_registry.common.serde import SchemaId
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    name = "proto"
    topic = f"{name}.in"
    create_topic(kafka_bootstrap, topic)
    client = registry_auth.client()
    context = SerializationContext(topic, MessageField.VALUE)
    first, second = make_transactions(1500, seed=31).drop("is_fraud"), make_transactions(700, seed=32).drop("is_fraud")
    # v1: confluent-kafka's ProtobufSerializer registers the file as a serialized descriptor, with its imports
    v1 = _transaction_class(with_channel=False)
    serialize = ProtobufSerializer(v1, client, {"use.deprecated.format": False})
    values = [serialize(_message(v1, row), context) for row in _rows(first)]
    assert values[0][5:7] == b"\x02\x02"  # message indexes [1]: the file's second message
    # v2: registered as .proto source (as a Java shop's serializer or CI does), messages framed by confluent-kafka
    v2_id = client.register_schema(f"{topic}-value", Schema(PROTO_V2, "PROTOBUF"))
    v2 = _transaction_class(with_channel=True)
    framed = SchemaId("PROTOBUF", v2_id, None, [1])
    values += [
        prefix_schema_id_serializer(_message(v2, {**row, "channel": "app"}).SerializeToString(), context, framed)
        for row in _rows(second)
    ]
    wrong_index = prefix_schema_id_serializer(b"", context, SchemaId("PROTOBUF", v2_id, None, [5]))
    truncated = prefix_schema_id_serializer(b"\x0a\xff\x01", context, framed)  # txn_id: 255 bytes announced, 1 there
    avro_context = SerializationContext("proto.avro", MessageField.VALUE)
    avro = AvroSerializer(client, json.dumps(V1))(_rows(first)[0], avro_context)
    sent = produce(kafka_bootstrap, topic, [*values, *[wrong_index] * 10, *[avro] * 10, *[truncated] * 10])

    code, err = _stream(stream_bundle, kafka_bootstrap, registry_auth, name, "--format", "protobuf")
    assert code == 0, err
    out = consume_all(kafka_bootstrap, f"{name}.out")
    dlq = consume_dead_letters(kafka_bootstrap, f"{name}.dlq")
    assert len(out) + len(dlq) == sent and len(dlq) == 30
    assert sum("the message indexes [5] name no message" in d["reason"] for d in dlq) == 10
    assert sum(f"do not decode with schema id {v2_id} (Protobuf): DecodeError" in d["reason"] for d in dlq) == 10
    assert sum("is a AVRO schema, but the stream reads --format protobuf" in d["reason"] for d in dlq) == 10
    _same_scores(out, _batch_scores(run_cli, stream_bundle, pl.concat([first, second]), tmp_path))
    assert Counter(r.get("channel") for r in out) == {None: 1500, "app": 700}


def test_avro_output_is_the_input_payload_plus_the_scored_fields_under_a_registered_schema(
    kafka_bootstrap: str, registry_auth: Registry, stream_bundle: Path, run_cli: Any, tmp_path: Path
) -> None:
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    name = "avro-out"
    topic = f"{name}.in"
    create_topic(kafka_bootstrap, topic)
    first, second = make_transactions(800, seed=41).drop("is_fraud"), make_transactions(200, seed=42).drop("is_fraud")
    _produce_avro(kafka_bootstrap, registry_auth, topic, V1, _rows(first))
    # a later version with a field of the name of one segscope adds: dropped from the output schema, whose value wins
    clash = {**V1, "fields": [*FIELDS, {"name": "segment", "type": "string", "default": "retail"}]}
    _produce_avro(kafka_bootstrap, registry_auth, topic, clash, [{**r, "segment": "smb"} for r in _rows(second)])
    inputs = _raw_values(kafka_bootstrap, topic)

    code, err = _stream(stream_bundle, kafka_bootstrap, registry_auth, name, "--format", "avro", "--out-format", "avro")
    assert code == 0, err
    client = registry_auth.client()
    assert {f"{name}.out-value", f"{name}.alerts-value"} <= set(client.get_subjects())
    written = _raw_values(kafka_bootstrap, f"{name}.out")
    assert len(written) == 1000
    deserialize = AvroDeserializer(client)  # a consumer segscope does not use: the writer schema by id
    context = SerializationContext(f"{name}.out", MessageField.VALUE)
    out = [deserialize(value, context) for value in written.values()]
    # the input's payload as it came, byte for byte, then the scored fields (v1); the clashing version re-encoded
    plain = [key for key in written if inputs[key][5:] == written[key][5 : len(inputs[key])]]
    assert len(plain) == 800
    assert all(written[key][:5] != inputs[key][:5] for key in written)  # the output schema's own id
    batch = _batch_scores(run_cli, stream_bundle, pl.concat([first, second]), tmp_path)
    for record in out:
        record["ts"] = record["ts"].isoformat()
    _same_scores(out, batch)
    assert all(isinstance(r["segment"], int) for r in out)  # segscope's segment, not the input's text
    assert all(r["supervised_score"] is None and r["id"] == r["txn_id"] for r in out)
    fields = [f["name"] for f in json.loads(client.get_latest_version(f"{name}.out-value").schema.schema_str)["fields"]]
    assert fields[:8] == [f["name"] for f in FIELDS] and fields[8] == "id" and fields[-1] == "model_version"


def _raw_values(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """Every message's value by key (the transaction id), as bytes."""
    from tests.kafka_helpers import _drain

    return {m.key: m.value for m in _drain(bootstrap, topic, 3.0)}


def test_schemas_are_fetched_once_per_id_and_an_unknown_id_once_a_minute(registry_auth: Registry, model: Any) -> None:
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from segscope._kafka import Polled
    from segscope._wire import RegistrySettings, SchemaRegistry
    from segscope.sources.messages import decode
    from segscope.sources.wire import WireDecoder

    client = registry_auth.client()
    context = SerializationContext("cached.in", MessageField.VALUE)
    rows = _rows(make_transactions(600, seed=51).drop("is_fraud"))
    values = [AvroSerializer(client, json.dumps(V1))(r, context) for r in rows[:300]]
    values += [AvroSerializer(client, json.dumps(V2))({**r, "channel": "pos"}, context) for r in rows[300:]]
    values += [b"\x00" + struct.pack(">I", 876_543) + values[0][5:]] * 100
    polled = Polled(values, [None] * len(values), [()] * len(values), lambda i: ("cached.in", 0, i, None), {})
    registry = SchemaRegistry(RegistrySettings(registry_auth.url, basic_auth=registry_auth.auth))
    try:
        decoder = WireDecoder(registry, "avro")
        for _ in range(3):  # three polls of the same messages
            batch = decode(polled, model.input_schema(), max_bytes=65_536, wire=decoder)
            assert batch.frame.height == 600 and len(batch.dead) == 100
        assert registry.fetches == 3  # v1, v2 and the unknown id: one call each, however many messages name them
        assert batch.frame["amount"].to_list() == [r["amount"] for r in rows]
    finally:
        registry.close()


def test_misconfiguration_is_one_line_before_anything_is_read(
    registry_auth: Registry, stream_bundle: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["stream", "--bundle", stream_bundle, "--bootstrap", "127.0.0.1:1", "--in-topic", "t", "--out-topic", "o"]

    def one_line(*extra: str) -> str:
        result = run_cli(*base, *extra)
        lines = [line for line in result.err.splitlines() if line.strip()]
        assert result.code != 0 and len(lines) == 1 and "Traceback" not in result.err, result.err
        return lines[0]

    monkeypatch.setenv("WRONG_AUTH", "scorer:not-the-password")
    registry = ["--format", "avro", "--schema-registry", registry_auth.url]
    line = one_line(*registry, "--schema-registry-auth", "env:WRONG_AUTH")
    assert "refused the request" in line and "401" in line and "not-the-password" not in line
    line = one_line(*registry, "--schema-registry-auth", "scorer:pw")
    assert "${env:NAME}" in line and "scorer:pw" not in line  # a secret on the command line is refused
    assert "need a schema registry" in one_line("--format", "avro")
    assert "needs Avro input" in one_line(
        "--format", "protobuf", "--out-format", "avro", "--schema-registry", "http://x"
    )
    assert "must be json, avro or protobuf" in one_line("--format", "xml")


def test_a_registry_outage_stops_the_stream_in_one_line_and_a_restart_resumes(
    kafka_bootstrap: str, stream_bundle: Path, tmp_path: Path
) -> None:
    """A registry of its own (stopped mid-test): schemas already fetched keep scoring; a new schema id meets the
    outage, is retried for the configured timeout, then the stream stops with one line, dead-lettering nothing and
    committing nothing past it; with the registry back (same storage, same ids), a restart scores the rest."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from tests.kafka_helpers import count, free_port, schema_registry, wait_until

    data, port, name = tmp_path / "registry", free_port(), "outage"
    url = schema_registry("start", data, port)
    topic = f"{name}.in"
    create_topic(kafka_bootstrap, topic)
    context = SerializationContext(topic, MessageField.VALUE)
    rows = _rows(make_transactions(800, seed=61).drop("is_fraud"))
    try:
        with SchemaRegistryClient({"url": url}) as client:
            v1 = [AvroSerializer(client, json.dumps(V1))(r, context) for r in rows[:500]]
            v2 = [AvroSerializer(client, json.dumps(V2))({**r, "channel": "x"}, context) for r in rows[500:]]
        produce(kafka_bootstrap, topic, v1)
        config = tmp_path / "stream.toml"
        config.write_text(f'[messages]\nformat = "avro"\n\n[messages.schema_registry]\nurl = "{url}"\ntimeout = "3s"\n')
        args = ["--in-topic", topic, "--out-topic", f"{name}.out", "--dlq-topic", f"{name}.dlq", "--group", "g-out"]
        proc = start_stream(stream_bundle, kafka_bootstrap, *args, "--config", str(config), "--stats-interval", "1")
        wait_until(lambda: count(kafka_bootstrap, f"{name}.out") >= 500, proc=proc)
        schema_registry("stop", data)
        produce(kafka_bootstrap, topic, v2)  # a schema id the stream has not met
        _, err = proc.communicate(timeout=120)
        last = err.strip().splitlines()[-1]
        assert proc.returncode != 0 and "Traceback" not in err, err
        assert "did not answer for 3 s" in last and "fetch schema id" in last and "restart it" in last, last
        assert count(kafka_bootstrap, f"{name}.dlq") == 0 and count(kafka_bootstrap, f"{name}.out") == 500

        assert schema_registry("start", data, port) == url  # back, with the ids it had
        proc = start_stream(stream_bundle, kafka_bootstrap, *args, "--config", str(config), "--idle-exit", "4")
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        out = consume_all(kafka_bootstrap, f"{name}.out")
        assert {r["txn_id"] for r in out} == {r["txn_id"] for r in rows}  # every record scored, none lost
        assert Counter(r.get("channel") for r in {r["txn_id"]: r for r in out}.values()) == {None: 500, "x": 300}
    finally:
        schema_registry("stop", data)


def test_every_avro_and_protobuf_type_becomes_a_value_the_checks_and_json_output_take(registry_auth: Registry) -> None:
    """What the docs promise per type, decoded from confluent-kafka's serializers' bytes; every record is JSON."""
    import decimal
    import uuid

    import orjson
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2, wrappers_pb2
    from google.protobuf.message_factory import GetMessageClass

    from segscope._wire import RegistrySettings, SchemaRegistry
    from segscope.sources.wire import WireDecoder

    client = registry_auth.client()
    money = {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}
    address = {"type": "record", "name": "Address", "fields": [{"name": "city", "type": "string"}]}
    schema = {
        "type": "record",
        "name": "Everything",
        "fields": [
            {"name": "amount", "type": money},
            {"name": "raw", "type": "bytes"},
            {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["CARD", "WIRE"]}},
            {"name": "note", "type": ["null", "string"], "default": None},
            {"name": "address", "type": address},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "limits", "type": {"type": "map", "values": "long"}},
        ],
    }
    record = {
        "amount": decimal.Decimal("1234.50"), "raw": b"\x00\xff", "uid": uuid.UUID(int=7), "day": dt.date(2026, 1, 5),
        "at": dt.datetime(2026, 1, 5, 14, 5, tzinfo=dt.UTC), "kind": "WIRE", "note": None,
        "address": {"city": "Lyon"}, "tags": ["a", "b"], "limits": {"day": 500},
    }  # fmt: skip
    value = AvroSerializer(client, json.dumps(schema))(record, SerializationContext("types.avro", MessageField.VALUE))
    registry = SchemaRegistry(RegistrySettings(registry_auth.url, basic_auth=registry_auth.auth))
    try:
        got = WireDecoder(registry, "avro").loads(value)
        assert got["amount"] == 1234.5 and got["raw"] == "AP8=" and got["kind"] == "WIRE" and got["note"] is None
        assert str(got["uid"]) == str(uuid.UUID(int=7)) and got["day"] == dt.date(2026, 1, 5)
        assert got["at"] == dt.datetime(2026, 1, 5, 14, 5, tzinfo=dt.UTC)
        assert got["address"] == {"city": "Lyon"} and got["tags"] == ["a", "b"] and got["limits"] == {"day": 500}
        assert json.loads(orjson.dumps(got))["at"] == "2026-01-05T14:05:00+00:00"

        kind = descriptor_pb2.FieldDescriptorProto
        file = descriptor_pb2.FileDescriptorProto(
            name="types.proto", package="types", syntax="proto3",
            dependency=["google/protobuf/timestamp.proto", "google/protobuf/wrappers.proto"],
        )  # fmt: skip
        file.enum_type.add(name="Kind").value.extend(
            [descriptor_pb2.EnumValueDescriptorProto(name=n, number=i) for i, n in enumerate(["CARD", "WIRE"])]
        )
        message = file.message_type.add(name="Everything")
        nested = message.nested_type.add(name="Address")
        nested.field.add(name="city", number=1, type=kind.TYPE_STRING)
        message.field.add(name="kind", number=1, type=kind.TYPE_ENUM, type_name=".types.Kind")
        message.field.add(name="raw", number=2, type=kind.TYPE_BYTES)
        message.field.add(name="at", number=3, type=kind.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
        message.field.add(name="limit", number=4, type=kind.TYPE_MESSAGE, type_name=".google.protobuf.Int64Value")
        message.field.add(name="address", number=5, type=kind.TYPE_MESSAGE, type_name=".types.Everything.Address")
        message.field.add(name="tags", number=6, type=kind.TYPE_STRING, label=kind.LABEL_REPEATED)
        message.field.add(name="count", number=7, type=kind.TYPE_INT64)
        message.field.add(name="unset", number=8, type=kind.TYPE_MESSAGE, type_name=".types.Everything.Address")
        pool = descriptor_pool.DescriptorPool()
        for module in (timestamp_pb2, wrappers_pb2):
            pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
        pool.Add(file)
        cls = GetMessageClass(pool.FindMessageTypeByName("types.Everything"))
        sent = cls(kind=1, raw=b"\x00\xff", tags=["a", "b"], count=0)
        sent.at.FromDatetime(dt.datetime(2026, 1, 5, 14, 5, tzinfo=dt.UTC))
        sent.limit.value = 500
        sent.address.city = "Lyon"
        serialize = ProtobufSerializer(cls, client, {"use.deprecated.format": False})
        value = serialize(sent, SerializationContext("types.proto", MessageField.VALUE))
        got = WireDecoder(registry, "protobuf").loads(value)
        assert got == {
            "kind": "WIRE", "raw": "AP8=", "at": dt.datetime(2026, 1, 5, 14, 5, tzinfo=dt.UTC), "limit": 500,
            "address": {"city": "Lyon"}, "tags": ["a", "b"], "count": 0, "unset": None,
        }  # fmt: skip
        orjson.dumps(got)
    finally:
        registry.close()


def test_an_avro_schema_with_references_is_read_with_the_types_they_name(registry_auth: Registry) -> None:
    from confluent_kafka.schema_registry import Schema, SchemaReference
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from segscope._wire import RegistrySettings, SchemaRegistry
    from segscope.sources.wire import WireDecoder

    client = registry_auth.client()
    money = {"type": "record", "name": "Money", "namespace": "shop", "fields": [{"name": "cents", "type": "long"}]}
    client.register_schema("shop.Money", Schema(json.dumps(money), "AVRO"))
    order = {"type": "record", "name": "Order", "fields": [{"name": "price", "type": "shop.Money"}]}
    schema = Schema(json.dumps(order), "AVRO", [SchemaReference("shop.Money", "shop.Money", 1)])
    context = SerializationContext("orders", MessageField.VALUE)
    value = AvroSerializer(client, schema)({"price": {"cents": 150}}, context)
    registry = SchemaRegistry(RegistrySettings(registry_auth.url, basic_auth=registry_auth.auth))
    try:
        assert WireDecoder(registry, "avro").loads(value) == {"price": {"cents": 150}}
        assert registry.fetches == 2  # the schema, and the subject version its reference names
    finally:
        registry.close()
