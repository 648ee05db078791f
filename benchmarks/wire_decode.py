"""What Avro and Protobuf cost per record against JSON, on the stream's own decode and encode paths.

    python benchmarks/wire_decode.py [--records 50000] [--repeats 5] [--batch 5000]

The same ~200-byte card transactions (as in stream_throughput.py) are written three ways: JSON; Avro and
Protobuf in a schema registry's wire format, framed by confluent-kafka's own serializers against a real registry
(Apicurio Registry, started by connectors/schema-registry/registry). Each is decoded by
``segscope.sources.kafka.decode`` (bytes -> a batch of typed rows, the checks included) in batches of --batch,
then its scored batch encoded by the stream's encoder (JSON: the scored fields spliced into the message; Avro
output: the input payload + the scored fields under the derived schema). Formats alternate within each repeat, so
every ratio compares runs on the same machine state; medians over --repeats. Microseconds per record. Writes
benchmarks/results/wire_decode.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from segscope import Model  # noqa: E402
from segscope._kafka import Polled  # noqa: E402
from segscope._wire import RegistrySettings, SchemaRegistry  # noqa: E402
from segscope.config import SegscopeConfig  # noqa: E402
from segscope.sinks.kafka import encode  # noqa: E402
from segscope.sinks.wire import WireEncoder  # noqa: E402
from segscope.sources.messages import decode  # noqa: E402
from segscope.sources.wire import WireDecoder  # noqa: E402
from segscope.testing.data import make_transactions  # noqa: E402
from tests.kafka_helpers import free_port, schema_registry  # noqa: E402

FIELDS = [
    ("txn_id", "string"), ("amount", "double"), ("merchant_category", "string"), ("country", "string"),
    ("card_present", "boolean"), ("n_txn_24h", "long"), ("distance_km", "double"), ("merchant", "string"),
]  # fmt: skip


def rows(n: int) -> list[dict[str, Any]]:
    frame = make_transactions(n, seed=7).drop("is_fraud")
    out = []
    for i, row in enumerate(frame.iter_rows(named=True)):
        out.append({**row, "ts": row["ts"].replace(tzinfo=dt.UTC), "merchant": f"merchant {i % 997:04d}, main st."})
    return out


def as_json(records: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps({**r, "ts": r["ts"].isoformat()}, separators=(",", ":")).encode() for r in records]


def as_avro(client: Any, records: list[dict[str, Any]]) -> list[bytes]:
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    fields = [{"name": n, "type": t} for n, t in FIELDS]
    fields.insert(1, {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}})
    schema = {"type": "record", "name": "Transaction", "namespace": "bench", "fields": fields}
    serialize = AvroSerializer(client, json.dumps(schema))
    context = SerializationContext("bench.avro", MessageField.VALUE)
    return [serialize(r, context) for r in records]


def as_protobuf(client: Any, records: list[dict[str, Any]]) -> list[bytes]:
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    kinds = descriptor_pb2.FieldDescriptorProto
    types = {"string": kinds.TYPE_STRING, "double": kinds.TYPE_DOUBLE, "boolean": kinds.TYPE_BOOL}
    types["long"] = kinds.TYPE_INT64
    file = descriptor_pb2.FileDescriptorProto(
        name="bench.proto", package="bench", syntax="proto3", dependency=["google/protobuf/timestamp.proto"]
    )
    message = file.message_type.add(name="Transaction")
    for number, (name, kind) in enumerate(FIELDS, 1):
        message.field.add(name=name, number=number, type=types[kind])
    timestamp = ".google.protobuf.Timestamp"
    message.field.add(name="ts", number=len(FIELDS) + 1, type=kinds.TYPE_MESSAGE, type_name=timestamp)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    cls = GetMessageClass(pool.FindMessageTypeByName("bench.Transaction"))
    serialize = ProtobufSerializer(cls, client, {"use.deprecated.format": False})
    context = SerializationContext("bench.protobuf", MessageField.VALUE)
    out = []
    for r in records:
        m = cls(**{k: v for k, v in r.items() if k != "ts"})
        m.ts.FromDatetime(r["ts"])
        out.append(serialize(m, context))
    return out


def polls(values: list[bytes], size: int) -> list[Polled]:
    out = []
    for start in range(0, len(values), size):
        chunk = values[start : start + size]
        out.append(Polled(chunk, [None] * len(chunk), [()] * len(chunk), lambda i, s=start: ("b", 0, s + i, None), {}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "wire_decode.json"))
    args = parser.parse_args()

    config = SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))
    model = Model(config).fit(make_transactions(4000, seed=0))
    schema = model.input_schema()
    records = rows(args.records)
    with tempfile.TemporaryDirectory() as folder:
        url = schema_registry("start", Path(folder), free_port())
        try:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            with SchemaRegistryClient({"url": url}) as client:
                values = {"json": as_json(records), "avro": as_avro(client, records)}
                values["protobuf"] = as_protobuf(client, records)
            registry = SchemaRegistry(RegistrySettings(url))
            decoders: dict[str, WireDecoder | None] = {"json": None}
            decoders["avro"] = WireDecoder(registry, "avro")
            decoders["protobuf"] = WireDecoder(registry, "protobuf")
            encoders = {"json": encode, "avro": WireEncoder(decoders["avro"], "avro", ["bench.out"])}  # type: ignore[arg-type]
            batches = {k: polls(v, args.batch) for k, v in values.items()}
            for fmt, decoder in decoders.items():  # warm-up: schemas fetched, output schema registered
                decode(batches[fmt][0], schema, max_bytes=65_536, wire=decoder)
            sample = {k: decode(batches[k][0], schema, max_bytes=65_536, wire=decoders[k]) for k in encoders}
            scored = {k: model.score(b.frame) for k, b in sample.items()}
            for k in encoders:
                encoders[k](scored[k], sample[k])
            decode_us: dict[str, list[float]] = {k: [] for k in values}
            encode_us: dict[str, list[float]] = {k: [] for k in encoders}
            for _ in range(args.repeats):
                for fmt in values:
                    started = time.perf_counter()
                    for polled in batches[fmt]:
                        batch = decode(polled, schema, max_bytes=65_536, wire=decoders[fmt])
                        assert batch.frame.height == len(polled), batch.dead[:1]
                    decode_us[fmt].append((time.perf_counter() - started) / args.records * 1e6)
                for fmt, encoder in encoders.items():
                    rounds = max(1, args.records // args.batch)
                    started = time.perf_counter()
                    for _ in range(rounds):
                        encoder(scored[fmt], sample[fmt])
                    encode_us[fmt].append((time.perf_counter() - started) / (rounds * args.batch) * 1e6)
            registry.close()
        finally:
            schema_registry("stop", Path(folder))

    def ratios(times: dict[str, list[float]], fmt: str) -> float:
        return statistics.median(a / j for a, j in zip(times[fmt], times["json"], strict=True))

    result = {
        "records": args.records,
        "batch": args.batch,
        "repeats": args.repeats,
        "bytes_per_record": {k: statistics.mean(map(len, v)) for k, v in values.items()},
        "decode_us_per_record": {k: statistics.median(v) for k, v in decode_us.items()},
        "decode_ratio_to_json": {k: ratios(decode_us, k) for k in ("avro", "protobuf")},
        "encode_us_per_record": {k: statistics.median(v) for k, v in encode_us.items()},
        "encode_ratio_to_json": {"avro": ratios(encode_us, "avro")},
        "runs": {"decode": decode_us, "encode": encode_us},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for key in ("bytes_per_record", "decode_us_per_record", "decode_ratio_to_json", "encode_us_per_record"):
        print(f"{key}: " + ", ".join(f"{k} {v:.2f}" for k, v in result[key].items()))  # type: ignore[attr-defined]
    print(f"encode_ratio_to_json: avro {result['encode_ratio_to_json']['avro']:.2f}")  # type: ignore[index]


if __name__ == "__main__":
    main()
