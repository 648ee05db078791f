"""Connecting to a secured cluster, against a real broker with a SASL_SSL listener (SCRAM-SHA-256/512 users, PLAIN)
and a mutual-TLS listener, certificates made by the test (tests/kafka_helpers.start_secure_broker): a topic scored
end to end over SASL_SSL with SCRAM while foreign clients (kcat, confluent-kafka) produce over the secured listener;
every misconfiguration (a missing topic, an unreachable bootstrap, wrong credentials, a CA that did not sign the
broker, a client without its certificate) is one line within a bounded wait, and a wrong password never shows;
SIGTERM during that wait exits at once; a broker outage is a few log lines, not thousands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from segscope.testing.data import make_transactions
from tests.kafka_helpers import (
    MISCONFIGURATIONS,
    PLAIN_USER,
    SCRAM_USERS,
    WRONG_PASSWORD,
    broker,
    create_topic,
    free_port,
    group_caught_up,
    misconfiguration,
    produce,
    records,
    sasl_options,
    wait_until,
)


def _stream(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "segscope.cli", "stream", *map(str, args)]
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)


class _Lines:
    """A process's stderr lines as they come, with when each came."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.proc = proc
        assert proc.stderr is not None
        stream = proc.stderr
        self.thread = threading.Thread(
            target=lambda: [self.lines.append((time.monotonic(), x)) for x in stream], daemon=True
        )
        self.thread.start()

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        """A stream a failed assertion left running is killed."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.join()

    def join(self) -> None:
        """After the process exited: every line read, the pipes closed."""
        self.thread.join(timeout=30)
        self.proc.communicate(timeout=30)

    def between(self, start: float, end: float) -> list[str]:
        return [line for at, line in self.lines if start <= at <= end]

    def text(self) -> str:
        return "".join(line for _, line in self.lines)


def _kcat(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("kcat")
    assert path is not None, "kcat is not installed; `make test` installs Debian's kcat package"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, check=False)


def _tls(secure: dict[str, Any], *extra: str) -> list[str]:
    return ["-X", "ssl.ca.location=" + str(secure["certs"] / "ca.pem"), *extra]


def test_a_topic_is_scored_over_sasl_ssl_with_scram_end_to_end(
    kafka_secure: dict[str, Any], stream_bundle: Path, tmp_path: Path
) -> None:
    from confluent_kafka import Producer

    secure = kafka_secure
    create_topic(secure["PLAINTEXT"], "sec.in", partitions=3)
    values = records(make_transactions(2000, seed=31).drop("is_fraud"))
    # foreign producers over the secured listener: kcat with PLAIN (Debian's kcat links librdkafka 2.0.2, whose
    # SCRAM Kafka 4 refuses: librdkafka#4895, fixed in 2.6.1), confluent-kafka with SCRAM-SHA-512
    lines = tmp_path / "half.ndjson"
    lines.write_bytes(b"\n".join(values[:1000]) + b"\n")
    user, password = PLAIN_USER
    sent = _kcat("-P", "-b", secure["SASL_SSL"], "-t", "sec.in", "-l", str(lines), "-X", "security.protocol=SASL_SSL",
                 *_tls(secure), "-X", "sasl.mechanisms=PLAIN", "-X", f"sasl.username={user}", "-X",
                 f"sasl.password={password}")  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    mechanism, secret = SCRAM_USERS["bob"]
    producer = Producer({"bootstrap.servers": secure["SASL_SSL"], "security.protocol": "SASL_SSL",
                         "ssl.ca.location": str(secure["certs"] / "ca.pem"), "sasl.mechanism": mechanism,
                         "sasl.username": "bob", "sasl.password": secret})  # fmt: skip
    for value in values[1000:]:
        producer.produce("sec.in", value)
    assert producer.flush(60) == 0

    # the stream connects with SCRAM-SHA-256 from a config file, its password from the environment
    config = tmp_path / "kafka.toml"
    config.write_text(
        "[kafka]\n"
        f'"bootstrap.servers" = "{secure["SASL_SSL"]}"\n'
        'security.protocol = "SASL_SSL"\n'
        f'"ssl.ca.location" = "{secure["certs"] / "ca.pem"}"\n'
        '"sasl.mechanism" = "SCRAM-SHA-256"\n'
        '"sasl.username" = "alice"\n'
        '"sasl.password" = "${env:SEGSCOPE_TEST_KAFKA_PASSWORD}"\n'
        "[kafka.consumer]\n"
        '"session.timeout.ms" = 6000\n'
    )
    env = {"SEGSCOPE_TEST_KAFKA_PASSWORD": SCRAM_USERS["alice"][1]}
    args = ["--bundle", stream_bundle, "--config", config, "--in-topic", "sec.in", "--out-topic", "sec.out"]
    proc = _stream(*args, "--group", "g-sec", "--idle-exit", "3", env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "2,000 in, 2,000 scored" in err
    assert SCRAM_USERS["alice"][1] not in out + err

    # kafka-python through --kafka-option, SCRAM-SHA-512, the password from a file
    secret_file = tmp_path / "bob.password"
    secret_file.write_text(SCRAM_USERS["bob"][1] + "\n")
    python = ["--bundle", stream_bundle, "--bootstrap", secure["SASL_SSL"], "--in-topic", "sec.in", "--out-topic",
              "sec.py.out", "--group", "g-sec-py", "--client", "kafka-python", "--idle-exit", "3",
              *sasl_options(secure, "bob", f"${{file:{secret_file}}}"),
              "--kafka-option", "consumer.session.timeout.ms=6000"]  # fmt: skip
    proc = _stream(*python)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "2,000 in, 2,000 scored" in err and SCRAM_USERS["bob"][1] not in out + err

    # read back over the mutual-TLS listener: the client's certificate, its key's password from a file
    key_password = (secure["certs"] / "client.key.password").read_text().strip()
    for topic in ("sec.out", "sec.py.out"):
        read = _kcat("-C", "-b", secure["SSL"], "-t", topic, "-e", "-q", "-o", "beginning", "-X",
                     "security.protocol=SSL", *_tls(secure), "-X",
                     f"ssl.certificate.location={secure['certs'] / 'client.pem'}", "-X",
                     f"ssl.key.location={secure['certs'] / 'client.key'}", "-X",
                     f"ssl.key.password={key_password}")  # fmt: skip
        assert read.returncode == 0, read.stderr
        scored = [json.loads(line) for line in read.stdout.splitlines() if line.strip()]
        assert len({r["txn_id"] for r in scored}) == 2000 and all("score" in r for r in scored)


@pytest.fixture(scope="module")
def orders(kafka_secure: dict[str, Any]) -> str:
    """The topic the misconfigured streams are meant to read."""
    create_topic(kafka_secure["PLAINTEXT"], "orders.in", partitions=1)
    return "orders.in"


@pytest.mark.parametrize("name", MISCONFIGURATIONS)
def test_misconfiguration_is_one_line_within_a_bounded_wait(
    kafka_secure: dict[str, Any], orders: str, stream_bundle: Path, tmp_path: Path, name: str
) -> None:
    import re

    args, env, said = misconfiguration(kafka_secure, name, tmp_path)
    started = time.monotonic()
    proc = _stream("--bundle", stream_bundle, "--out-topic", "orders.out", *args, env=env)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    took = time.monotonic() - started
    print(f"{name}: one line after {took:.1f} s")  # the figures docs/streaming.md gives (pytest -s)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, err
    assert "Traceback" not in err and lines[-1].startswith("error: ") and len(lines[-1].splitlines()) == 1
    assert all(line.startswith("kafka: waiting up to") for line in lines[:-1]), err
    assert re.search(said, lines[-1]), lines[-1]
    assert WRONG_PASSWORD not in out + err
    bound = 4 if "--connect-timeout" in args else 0
    assert took < bound + 20, f"{name}: {took:.1f} s"


def test_oauthbearer_settings_reach_the_client(kafka_secure: dict[str, Any], orders: str, stream_bundle: Path) -> None:
    """librdkafka's unsigned OAUTHBEARER token (a test broker's; OIDC takes the same path with its own keys): the
    stream logs in and gets the cluster's metadata, shown by the line about a topic it does not find there."""
    options = {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(kafka_secure["certs"] / "ca.pem"),
        "sasl.mechanism": "OAUTHBEARER",
        "enable.sasl.oauthbearer.unsecure.jwt": "true",
        "sasl.oauthbearer.config": "principal=alice",
    }
    args = [word for key, value in options.items() for word in ("--kafka-option", f"{key}={value}")]
    proc = _stream("--bundle", stream_bundle, "--bootstrap", kafka_secure["SASL_SSL"], "--in-topic", "orders.inn",
                   "--out-topic", "orders.out", *args)  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "did you mean 'orders.in'" in err, err


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_sigterm_while_waiting_for_the_cluster_exits_at_once(stream_bundle: Path, client: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    proc = _stream(
        "--bundle", stream_bundle, "--bootstrap", dead, "--in-topic", "a", "--out-topic", "b", "--client", client
    )
    with _Lines(proc) as lines:
        if client == "confluent":
            wait_until(lambda: "kafka: waiting up to 30 s" in lines.text(), timeout=60, every=0.1)
        else:  # kafka-python waits in its constructor, quietly
            time.sleep(8)
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.monotonic() - sent
    print(f"{client}: exited {took:.2f} s after SIGTERM")
    assert proc.returncode == 0, lines.text()
    assert took < 3, f"SIGTERM took {took:.1f} s"
    assert "while connecting to Kafka: exiting" in lines.text() and "Traceback" not in lines.text()


def test_an_outage_is_a_few_log_lines_not_thousands(kafka_secure: dict[str, Any], stream_bundle: Path) -> None:
    """Last in this file: it stops the secured broker for 30 s (and starts it again on the same ports)."""
    bootstrap, data = kafka_secure["PLAINTEXT"], kafka_secure["data"]
    create_topic(bootstrap, "outage.in", partitions=3)
    produce(bootstrap, "outage.in", records(make_transactions(1000, seed=32).drop("is_fraud")))
    args = ["--in-topic", "outage.in", "--out-topic", "outage.out", "--group", "g-outage", "--stats-interval", "3600"]
    proc = _stream("--bundle", stream_bundle, "--bootstrap", bootstrap, *args)
    with _Lines(proc) as lines:
        wait_until(lambda: group_caught_up(bootstrap, "g-outage", "outage.in"))
        stopped = time.monotonic()
        broker("stop", data)
        time.sleep(30)
        assert broker("start", data) == bootstrap
        restarted = time.monotonic()
        during = lines.between(stopped, restarted)
        print(f"{len(during)} lines during a {restarted - stopped:.0f} s outage:\n" + "".join(during))
        assert len(during) <= 12, "".join(during)  # librdkafka reports each error again on every reconnect attempt
        produce(bootstrap, "outage.in", records(make_transactions(1000, seed=33).drop("is_fraud")))
        wait_until(lambda: group_caught_up(bootstrap, "g-outage", "outage.in"), timeout=240)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, lines.text()
    assert "2,000 in, 2,000 scored" in lines.text()
