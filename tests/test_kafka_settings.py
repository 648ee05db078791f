"""Kafka client settings without a broker: the config's ``kafka`` section and ``--kafka-option`` (nested or dotted
names, consumer/producer sections, routing of one-client keys), the keys a delivery guarantee depends on refused
with the reason, secrets only as ``${env:...}`` / ``${file:...}`` and never printed or stored, kafka-python's names.
The broker side (TLS, SASL, misconfiguration, outages) is tests/test_kafka_security.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from segscope import ConfigError, load_config
from segscope._kafka_setup import KafkaSettings, kafka_python_config, redact, resolve

SECURE_TOML = """
[kafka]
connect_timeout = "45s"
"bootstrap.servers" = "broker-1:9093,broker-2:9093"
security.protocol = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "scorer"
"sasl.password" = "${env:SEGSCOPE_TEST_KAFKA_PASSWORD}"
"ssl.ca.location" = "/etc/kafka/ca.pem"
"linger.ms" = 20
"session.timeout.ms" = 30000
"client.id" = "segscope-7"

[kafka.consumer]
"fetch.max.bytes" = 1048576

[kafka.producer]
acks = "1"
"enable.idempotence" = false
"""

SECURE_YAML = """
kafka:
  connect_timeout: 45s
  bootstrap.servers: broker-1:9093,broker-2:9093
  security:
    protocol: SASL_SSL
  sasl.mechanism: SCRAM-SHA-512
  sasl.username: scorer
  sasl.password: ${env:SEGSCOPE_TEST_KAFKA_PASSWORD}
  ssl.ca.location: /etc/kafka/ca.pem
  linger.ms: 20
  session.timeout.ms: 30000
  client.id: segscope-7
  consumer:
    fetch.max.bytes: 1048576
  producer:
    acks: "1"
    enable.idempotence: false
"""


@pytest.fixture
def settings(tmp_path: Path) -> KafkaSettings:
    path = tmp_path / "c.toml"
    path.write_text(SECURE_TOML)
    return KafkaSettings.build(load_config(path).kafka.model_dump())


def test_toml_and_yaml_give_the_same_settings(tmp_path: Path, settings: KafkaSettings) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(SECURE_YAML)
    assert KafkaSettings.build(load_config(path).kafka.model_dump()) == settings
    assert settings.connect_timeout == 45.0


def test_each_client_gets_its_own_keys_and_the_shared_ones(settings: KafkaSettings) -> None:
    consumer, producer = settings.for_role("consumer"), settings.for_role("producer")
    for role in (consumer, producer):
        assert role["security.protocol"] == "SASL_SSL" and role["client.id"] == "segscope-7"
        assert "bootstrap.servers" not in role  # given to both by segscope itself
    assert "linger.ms" not in consumer and producer["linger.ms"] == 20  # librdkafka: producer-only
    assert "session.timeout.ms" not in producer and consumer["session.timeout.ms"] == 30000  # consumer-only
    assert consumer["fetch.max.bytes"] == 1048576 and "fetch.max.bytes" not in producer
    assert producer["acks"] == "1" and "acks" not in consumer
    assert settings.bootstrap(None) == "broker-1:9093,broker-2:9093"
    assert settings.bootstrap("other:9092") == "other:9092"  # --bootstrap wins


def test_kafka_options_override_the_config_and_name_one_client(settings: KafkaSettings) -> None:
    section = {"properties": dict(settings.properties), "consumer": dict(settings.consumer)}
    over = KafkaSettings.build(
        section, ["linger.ms=50", "consumer.client.id=reader", "producer.client.id=writer"], connect_timeout=5
    )
    assert over.for_role("producer")["linger.ms"] == "50"
    assert over.for_role("consumer")["client.id"] == "reader"
    assert over.for_role("producer")["client.id"] == "writer"
    assert over.connect_timeout == 5


@pytest.mark.parametrize(
    ("option", "why"),
    [
        ("enable.auto.commit=true", "commits a batch's offsets itself"),
        ("consumer.enable.auto.offset.store=true", "commits a batch's offsets itself"),
        ("isolation.level=read_uncommitted", "use --isolation-level"),
        ("producer.transactional.id=shared", "use --transactional-id"),
        ("group.id=g", "use --group"),
        ("compression.type=zstd", "use --compression"),
        ("error_cb=print", "a callback segscope sets"),
        ("consumer.bootstrap.servers=h:1", "for both clients"),
        ("connect_timeout=5", "use --connect-timeout"),
        ("max.in.flight=5", "one request in flight per broker"),
        ("producer.max.in.flight.requests.per.connection=2", "records of the first are lost"),
        ("no-equals-sign", "takes key=value"),
    ],
)
def test_what_a_guarantee_depends_on_is_refused_with_the_reason(option: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        KafkaSettings.build(None, [option])
    assert "\n" not in str(info.value)


def test_the_consumer_keeps_its_own_requests_in_flight() -> None:
    settings = KafkaSettings.build(None, ["consumer.max.in.flight=3"])
    settings.check(exactly_once=True)
    assert settings.for_role("consumer")["max.in.flight"] == "3"
    assert "max.in.flight" not in settings.for_role("producer")


def test_idempotence_is_refused_only_with_exactly_once() -> None:
    settings = KafkaSettings.build(None, ["producer.enable.idempotence=false", "acks=1"])
    settings.check(exactly_once=False)
    with pytest.raises(ConfigError, match="need the idempotent producer"):
        settings.check(exactly_once=True)


@pytest.mark.parametrize(
    "key", ["sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"]
)
def test_a_literal_secret_is_refused_and_never_repeated(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=r"is a secret.*\$\{env:NAME\}") as info:
        KafkaSettings.build(None, [f"{key}=hunter2-literal"])
    assert "hunter2-literal" not in str(info.value)
    path = tmp_path / "c.toml"
    path.write_text(f'[kafka]\n"{key}" = "hunter2-literal"\n')
    with pytest.raises(ConfigError, match="is a secret") as info:
        load_config(path)
    assert "hunter2-literal" not in str(info.value) and "\n" not in str(info.value)


def test_secrets_come_from_the_environment_or_a_file_and_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGSCOPE_TEST_KAFKA_PASSWORD", "from-the-env-7f3a")
    secret_file = tmp_path / "key-password"
    secret_file.write_text("from-a-file-91bc\n")
    settings = KafkaSettings.build(
        None, ["sasl.password=${env:SEGSCOPE_TEST_KAFKA_PASSWORD}", f"ssl.key.password=${{file:{secret_file}}}"]
    )
    resolved = settings.resolved("consumer")
    assert resolved["sasl.password"] == "from-the-env-7f3a"
    assert resolved["ssl.key.password"] == "from-a-file-91bc"  # the file's last newline is not part of it
    said = redact("refused: from-the-env-7f3a / from-a-file-91bc")
    assert "from-the-env" not in said and "from-a-file" not in said and said.count("***") == 2
    with pytest.raises(ConfigError, match="environment variable NOT_SET_ANYWHERE is not set"):
        resolve("sasl.password", "${env:NOT_SET_ANYWHERE}")
    with pytest.raises(ConfigError, match=r"cannot read .*missing \(No such file"):
        resolve("sasl.password", f"${{file:{tmp_path / 'missing'}}}")


def test_the_kafka_section_never_reaches_a_bundle(run_cli, files: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "c.toml"
    config.write_text(SECURE_TOML + '\n[features]\nid_column = "txn_id"\ndrop = ["is_fraud"]\n')
    bundle = tmp_path / "bundle"
    result = run_cli("fit", files / "history.parquet", "--bundle", bundle, "--config", config)
    assert result.code == 0, result.err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "kafka" not in manifest["config"] and manifest["config"]["features"]["id_column"] == "txn_id"
    stored = " ".join(p.read_text(errors="replace") for p in bundle.rglob("*.json"))
    assert "SEGSCOPE_TEST_KAFKA_PASSWORD" not in stored and "SASL_SSL" not in stored
    shown = run_cli("inspect", bundle)
    assert shown.code == 0 and "sasl" not in (shown.out + shown.err).lower()


def test_refused_settings_stop_the_stream_before_it_connects(run_cli, stream_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    base = ("stream", "--bundle", stream_bundle, "--bootstrap", "127.0.0.1:1", "--in-topic", "a", "--out-topic", "b")
    refused = run_cli(*base, "--kafka-option", "enable.auto.commit=true")
    assert refused.code == 2 and refused.err.count("error:") == 1 and "auto.commit" in refused.err
    eos = run_cli(*base, "--exactly-once", "--kafka-option", "enable.idempotence=false")
    assert eos.code == 2 and "idempotent producer" in eos.err and "Traceback" not in eos.err
    nothing = run_cli("stream", "--bundle", stream_bundle, "--in-topic", "a", "--out-topic", "b")
    assert nothing.code == 2 and "pass --bootstrap HOST:PORT or set bootstrap.servers" in nothing.err


def test_kafka_python_takes_the_same_names_or_says_which_it_lacks() -> None:
    given = {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "scram-sha-512",
        "sasl.username": "scorer",
        "sasl.password": "pw",
        "ssl.ca.location": "/ca.pem",
        "ssl.endpoint.identification.algorithm": "none",
        "session.timeout.ms": "30000",
        "auto.offset.reset": "latest",
    }
    consumer = kafka_python_config(given, "consumer", KafkaConsumer.DEFAULT_CONFIG)
    assert consumer == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "scorer",
        "sasl_plain_password": "pw",
        "ssl_cafile": "/ca.pem",
        "ssl_check_hostname": False,
        "session_timeout_ms": 30000,
        "auto_offset_reset": "latest",
    }
    producer = kafka_python_config(
        {"linger.ms": "20", "message.max.bytes": 2_000_000}, "producer", KafkaProducer.DEFAULT_CONFIG
    )
    assert producer == {"linger_ms": 20, "max_request_size": 2_000_000}
    for key in ("sasl.oauthbearer.method", "debug", "queued.max.messages.kbytes"):
        with pytest.raises(
            ConfigError, match=f"{key} has no equivalent in kafka-python's consumer.*--client confluent"
        ):
            kafka_python_config({key: "x"}, "consumer", KafkaConsumer.DEFAULT_CONFIG)
