"""Helpers for tests against the real Kafka broker (connectors/kafka/broker)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "connectors" / "kafka" / "broker"


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768+): a broker restarted on it cannot find it taken
    by a client's outgoing connection (clients reconnecting to the stopped broker use ephemeral ports)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def broker(action: str, data: Path, port: int | None = None) -> str:
    args = [str(BROKER), action, "--data", str(data)] + (["--port", str(port)] if port else [])
    out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"connectors/kafka/broker {action} failed ({out.returncode}): {out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def kill_broker(data: Path) -> None:
    """SIGKILL the broker of ``data``: no controlled shutdown (its logs are recovered on the next start)."""
    pid = int((data / "broker.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    (data / "broker.pid").unlink()


def scrape_metrics(port: int) -> dict[str, float]:
    """The stream's ``segscope_`` metrics from its /metrics page on ``port`` ({} while it is not serving yet)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("segscope_")}


def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, values: Iterable[bytes], keys: Iterable[bytes | None] | None = None) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2_000_000)
    n = 0
    listed = None if keys is None else list(keys)
    for i, value in enumerate(values):
        key = None if listed is None else listed[i]
        producer.send(topic, key=key, value=value)
        n += 1
    producer.flush()
    producer.close()
    return n


def records(frame) -> list[bytes]:  # type: ignore[no-untyped-def]
    import polars as pl

    rows = frame.with_columns(pl.col("ts").cast(pl.String)).iter_rows(named=True)
    return [json.dumps(r).encode() for r in rows]


def _reader(bootstrap: str, topic: str, idle: float, committed: bool = False) -> KafkaConsumer:
    """Reads the whole topic from the start, stopping after ``idle`` seconds without a message."""
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(idle * 1000),
        max_poll_records=10_000,
        fetch_max_bytes=64 * 1024 * 1024,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )


def _drain(bootstrap: str, topic: str, idle: float, timeout: float = 180.0, committed: bool = False) -> list[Any]:
    """Every message of the topic: read until each partition's position reaches its end offset (a pause of
    ``idle`` seconds alone does not end it: a busy machine or a restarted broker can pause that long)."""
    consumer = _reader(bootstrap, topic, idle, committed)
    out: list[Any] = []
    started = time.monotonic()
    try:
        while True:
            out += list(consumer)
            parts = list(consumer.assignment())
            if parts:
                ends = consumer.end_offsets(parts)
                if all(consumer.position(tp) >= end for tp, end in ends.items()):
                    return out
            elif time.monotonic() > started + 3 * idle:
                return out  # nothing assigned after waiting: a topic that does not exist
            if time.monotonic() > started + timeout:
                raise AssertionError(f"{topic}: not read to its end in {timeout:.0f} s ({len(out)} messages)")
    finally:
        consumer.close()


class Feeder(threading.Thread):
    """A producer of the test (confluent-kafka, idempotent, keyed: each key's records stay in order in one
    partition) that sends ``values`` at a steady rate over ``seconds`` and rides out broker outages: its messages
    wait up to 5 minutes, and a client that lost every broker (librdkafka issue 5301: the input would stop growing
    for good) is replaced. Stranded means messages waiting, no delivery for 10 s, and the client unable to read
    the topic's metadata while a new client can, twice 10 s apart. The new client sends again what the old one
    still held, those not in the topic already (``identify`` tells a value), in their order: each value is written
    once, and a key's values in order (a partition's writes are a prefix of what was sent to it)."""

    CHECK = 10.0

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        values: list[bytes],
        keys: list[bytes],
        seconds: float = 110.0,
        identify: Any = lambda value: json.loads(value)["txn_id"],
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.values, self.keys = bootstrap, topic, values, keys
        self.seconds, self.identify = seconds, identify
        self.errors: list[str] = []
        self.replaced = 0  # clients replaced after they lost every broker
        self.pending: set[int] = set()  # sent, not yet delivered
        self.generation = 0  # of the current client: the reports of a replaced one's purged messages are not errors
        self.progress = self.checked = time.monotonic()
        self.suspect: float | None = None
        self.retired: list[Any] = []

    def _client(self) -> Any:
        from confluent_kafka import Producer

        config = {"enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 300_000, "log_level": 0}
        return Producer({"bootstrap.servers": self.bootstrap, **config})

    def _send(self, i: int) -> None:
        generation = self.generation

        def report(err, _msg) -> None:  # type: ignore[no-untyped-def]
            if err is None:
                self.pending.discard(i)
                self.progress = time.monotonic()
            elif generation == self.generation:
                self.errors.append(err.str())

        self.pending.add(i)
        self.producer.produce(self.topic, self.values[i], self.keys[i], on_delivery=report)
        self.producer.poll(0)

    def _stranded(self) -> bool:
        from confluent_kafka import KafkaException

        now = time.monotonic()
        if not self.pending:
            self.progress = now
        if now - self.progress < self.CHECK or now - self.checked < self.CHECK:
            return False
        self.checked = now
        try:
            self.producer.list_topics(self.topic, timeout=2)
            self.suspect = None
            return False
        except KafkaException:  # an outage, or a client that lost its brokers
            pass
        try:
            self._client().list_topics(self.topic, timeout=5)
        except KafkaException:  # the cluster is away
            self.suspect = None
            return False
        if self.suspect is None:
            self.suspect = now
            return False
        return True

    def _replace(self) -> None:
        old, self.generation, self.suspect = self.producer, self.generation + 1, None
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.poll(0)
        self.retired.append(old)  # kept: destroying a client that lost its brokers can wait for them
        self.producer, self.replaced = self._client(), self.replaced + 1
        there = {self.identify(m.value) for m in _drain(self.bootstrap, self.topic, idle=2.0)}
        for i in sorted(self.pending):
            if self.identify(self.values[i]) in there:
                self.pending.discard(i)
            else:
                self._send(i)
        self.progress = time.monotonic()

    def run(self) -> None:
        self.producer = self._client()
        started = time.monotonic()
        for i in range(len(self.values)):
            self._send(i)
            if self._stranded():
                self._replace()
            ahead = started + (i + 1) * self.seconds / len(self.values) - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        deadline = time.monotonic() + 300
        while self.pending and time.monotonic() < deadline:
            self.producer.flush(1.0)
            if self._stranded():
                self._replace()
        if self.pending:
            self.errors.append(f"{len(self.pending)} messages not delivered in 300 s")


def consume_all(bootstrap: str, topic: str, idle: float = 3.0) -> list[dict]:
    return [json.loads(m.value) for m in _drain(bootstrap, topic, idle)]


def consume_dead_letters(bootstrap: str, topic: str, idle: float = 3.0, committed: bool = False) -> list[dict]:
    """Dead letters as dicts: the ``segscope.dlq.*`` headers (without the prefix), plus the record's ``key``,
    raw ``value`` and the original ``headers``; with ``committed``, only those of committed transactions."""
    out = []
    for m in _drain(bootstrap, topic, idle, committed=committed):
        headers = list(m.headers or [])
        letter = {k.removeprefix("segscope.dlq."): v.decode() for k, v in headers if k.startswith("segscope.dlq.")}
        letter.update(key=m.key, value=m.value, headers=[(k, v) for k, v in headers if not k.startswith("segscope.")])
        out.append(letter)
    return out


def read_committed(bootstrap: str, topic: str, timeout: float = 60.0) -> list[bytes]:
    """Every value a read_committed reader (confluent-kafka, i.e. librdkafka) sees, reading each partition until its
    position passes the partition's end (the end of the last transaction included)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out += [m.value() for m in consumer.consume(10_000, 0.5) if m.error() is None]
        positions = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(topic, p) for p in parts])}
        if all(positions[p] >= ends[p] or ends[p] == 0 for p in parts):
            break
    else:
        raise AssertionError(f"{topic}: a read_committed reader did not reach the end in {timeout} s")
    consumer.close()
    return out


def count(bootstrap: str, topic: str) -> int:
    """Messages in ``topic``: the sum of its partitions' end offsets (0 for a topic that does not exist)."""
    return sum(end_offsets(bootstrap, topic).values())


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset (high watermark); {} for a topic that does not exist.

    Here and in ``committed_offsets`` the C client: these two are polled through broker outages, and a kafka-python
    client whose bootstrap fails in its constructor cannot be closed (its socket is left to the collector, whose
    ResourceWarning fails whichever test is running then)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "segscope-tests-offsets"})
    try:
        meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
        partitions = sorted(meta.partitions) if meta is not None and meta.error is None else []
        marks = {p: _watermarks(consumer, TopicPartition(topic, p)) for p in partitions}
        return {p: int(high) for p, (_low, high) in marks.items()}
    finally:
        consumer.close()


def _watermarks(consumer: Any, partition: Any) -> tuple[int, int]:
    """A partition's watermarks, asked again while its leadership moves (a broker busy with a restarted client
    answered NOT_LEADER_FOR_PARTITION once)."""
    from confluent_kafka import KafkaError, KafkaException

    moving = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    for _ in range(39):
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=15)
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in moving:
                raise
            time.sleep(0.25)
    low, high = consumer.get_watermark_offsets(partition, timeout=15)  # the last try: its error is the test's
    return int(low), int(high)


def committed_offsets(bootstrap: str, group: str) -> dict[str, int]:
    """The group's committed offsets, as "topic/partition": offset (asked by a consumer of the group that never
    joins it; not the C client's AdminClient, which can be collected on librdkafka's own thread and abort)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        topics = consumer.list_topics(timeout=15).topics
        asked = [TopicPartition(t, p) for t, meta in topics.items() if not t.startswith("__") for p in meta.partitions]
        found = consumer.committed(asked, timeout=15) if asked else []
    finally:
        consumer.close()
    return {f"{tp.topic}/{tp.partition}": int(tp.offset) for tp in sorted(found, key=lambda t: (t.topic, t.partition))
            if tp.offset >= 0}  # fmt: skip


def group_caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` has committed every partition of ``topic`` up to its end: the stream's work is done.
    (The output topic's size is no such signal: at-least-once, a rebalance or a restart re-sends batches, and
    their duplicates can make it reach the input's count while records are still to come.)"""
    ends = end_offsets(bootstrap, topic)
    try:
        committed = committed_offsets(bootstrap, group)
    except Exception:  # the coordinator is not there yet (a restarted broker)
        return False
    return bool(ends) and all(committed.get(f"{topic}/{p}", -1) >= end for p, end in ends.items())


def group_members(bootstrap: str, group: str) -> int:
    """Members of a consumer group once it is stable (0 while it rebalances)."""
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        info = admin.describe_groups([group])[group]
        return len(info["members"]) if info["group_state"] == "Stable" else 0
    except KafkaError:  # the group's coordinator is not there yet (a new group on a new broker)
        return 0
    finally:
        admin.close()


STARTED: list[subprocess.Popen[str]] = []  # streams started by the running test; reaped when it ends


def start_stream(bundle: Path, bootstrap: str, *args: str, log: Path | None = None) -> subprocess.Popen[str]:
    """``segscope stream`` in a process; its stderr to ``log`` when given (a stream that runs long with nobody
    reading its pipe would block on a full pipe: an outage's client warnings fill one in a minute)."""
    cmd = [sys.executable, "-m", "segscope.cli", "stream", "--bundle", str(bundle), "--bootstrap", bootstrap, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if log is None:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    else:
        with log.open("w") as stderr:  # the process has its own copy
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    STARTED.append(proc)
    return proc


def reap_streams() -> None:
    """Kill the streams a test started and left running (it failed before stopping them), so they neither
    consume from the next test's broker nor warn about a live subprocess when collected."""
    for proc in STARTED:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)  # also closes the pipes of those that ended
    STARTED.clear()


def wait_until(predicate, timeout: float = 120.0, every: float = 0.3, proc=None, explain=None) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``predicate``; on time-out, stop ``proc`` (a stream) and show what it printed, and what
    ``explain()`` says (e.g. offsets and the broker's log, to tell a lost output from a slow stream)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the stream exited with {proc.returncode}: {(proc.communicate()[1] or '')[-3000:]}")
        if time.monotonic() > deadline:
            detail = ""
            if proc is not None:
                proc.kill()
                detail = (proc.communicate()[1] or "")[-3000:]
            if explain is not None:
                detail += f"\n{explain()}"
            raise AssertionError(f"condition not reached in {timeout} s {detail}")
        time.sleep(every)


def terminate(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


REGISTRY = ROOT / "connectors" / "schema-registry" / "registry"


def schema_registry(action: str, data: Path, port: int | None = None, *auth: str) -> str:
    """Start or stop a real schema registry (Apicurio Registry, Confluent's API) by connectors/schema-registry;
    ``auth``: ``--user NAME --password-file FILE``. Returns its URL on start."""
    args = [str(REGISTRY), action, "--data", str(data), *(["--port", str(port)] if port else []), *auth]
    out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"schema-registry/registry {action} failed ({out.returncode}): {out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def make_certificates(folder: Path) -> Path:
    """A test CA, a broker certificate for 127.0.0.1 signed by it (PKCS#12, the broker's keystore), a client
    certificate with an encrypted key (password in ``client.key.password``), and a second CA that signed neither."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=segscope-test-ca")  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other-ca.key", "-out", "other-ca.pem",
            "-days", "2", "-subj", "/CN=another-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr", "-subj",
            "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost")  # fmt: skip
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            "broker.pem", "-days", "2", "-copy_extensions", "copy")  # fmt: skip
    openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem", "-out",
            "broker.p12", "-passout", "pass:broker-store")  # fmt: skip
    (folder / "client.key.password").write_text("client-key-pass\n")
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-aes256", "-pass",
            "file:client.key.password", "-out", "client.key")  # fmt: skip
    openssl("req", "-new", "-key", "client.key", "-passin", "file:client.key.password", "-out", "client.csr",
            "-subj", "/CN=segscope-client")  # fmt: skip
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            "client.pem", "-days", "2")  # fmt: skip
    return folder


#: SCRAM users the secured broker knows (user: (mechanism, password)), and the PLAIN one of its JAAS config
SCRAM_USERS = {"alice": ("SCRAM-SHA-256", "alice-Secret-256"), "bob": ("SCRAM-SHA-512", "bob-Secret-512")}
PLAIN_USER = ("plainuser", "plain-Secret")


def start_secure_broker(data: Path, certs: Path) -> dict[str, str]:
    """The project's broker with three more listeners: SASL_SSL (SCRAM-SHA-256/512, PLAIN and unsecured
    OAUTHBEARER) and SSL with client certificates required, beside PLAINTEXT (for the test's own admin calls).
    Returns the addresses by listener name."""
    ports = {name: free_port() for name in ("PLAINTEXT", "SASL_SSL", "SSL", "CONTROLLER")}
    props = (ROOT / "connectors" / "kafka" / "server.properties").read_text()
    props = props.replace("@DATA@", str(data)).replace("@BPORT@", str(ports["PLAINTEXT"]))
    props = props.replace("@CPORT@", str(ports["CONTROLLER"]))
    listeners = ",".join(f"{n}://127.0.0.1:{p}" for n, p in ports.items() if n != "CONTROLLER")
    lines = [line for line in props.splitlines() if not line.startswith(("listeners=", "advertised.listeners=",
             "listener.security.protocol.map="))]  # fmt: skip
    user, password = PLAIN_USER
    module = "org.apache.kafka.common.security"
    lines += [
        f"listeners={listeners},CONTROLLER://127.0.0.1:{ports['CONTROLLER']}",
        f"advertised.listeners={listeners}",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
        "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN,OAUTHBEARER",
        f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={module}.scram.ScramLoginModule required;",
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={module}.scram.ScramLoginModule required;",
        f"listener.name.sasl_ssl.plain.sasl.jaas.config={module}.plain.PlainLoginModule required "
        f'user_{user}="{password}";',
        f"listener.name.sasl_ssl.oauthbearer.sasl.jaas.config={module}.oauthbearer.OAuthBearerLoginModule required;",
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.location={certs / 'broker.p12'}",
        "ssl.keystore.password=broker-store",
        "ssl.key.password=broker-store",
        "listener.name.ssl.ssl.client.auth=required",
        "listener.name.ssl.ssl.truststore.type=PEM",
        f"listener.name.ssl.ssl.truststore.location={certs / 'ca.pem'}",
    ]
    data.mkdir(parents=True, exist_ok=True)
    (data / "server.properties").write_text("\n".join(lines) + "\n")
    plain = broker("start", data)
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    admin = AdminClient({"bootstrap.servers": plain})
    upserts = [
        UserScramCredentialUpsertion(
            name, ScramCredentialInfo(getattr(ScramMechanism, m.replace("-", "_")), 4096), secret.encode()
        )
        for name, (m, secret) in SCRAM_USERS.items()
    ]
    for future in admin.alter_user_scram_credentials(upserts).values():
        future.result(timeout=60)
    addresses = {"PLAINTEXT": plain, "SASL_SSL": f"127.0.0.1:{ports['SASL_SSL']}", "SSL": f"127.0.0.1:{ports['SSL']}"}
    mechanism, secret = SCRAM_USERS["alice"]
    login = Producer({"bootstrap.servers": addresses["SASL_SSL"], "security.protocol": "SASL_SSL",
                      "ssl.ca.location": str(certs / "ca.pem"), "sasl.mechanism": mechanism,
                      "sasl.username": "alice", "sasl.password": secret})  # fmt: skip
    deadline = time.monotonic() + 60
    while True:  # the SCRAM credentials reach the listener through the metadata log
        try:
            login.list_topics(timeout=2)
            return addresses
        except Exception:
            if time.monotonic() > deadline:
                raise


#: A password no broker accepts: never printed by segscope, whatever fails.
WRONG_PASSWORD = "wr0ng-Pa55word-4f9e"
#: What can be wrong when a stream connects, each one line (tests/test_kafka_security.py,
#: benchmarks/stream_misconfig.py); the topic they mean to read is orders.in.
MISCONFIGURATIONS = (
    "missing topic",
    "unreachable bootstrap",
    "wrong password",
    "wrong password, from a file",
    "a CA that did not sign the broker",
    "no client certificate for mutual TLS",
    "plaintext client on the TLS listener",
    "kafka-python, wrong password",
)


def sasl_options(
    secure: dict[str, Any], user: str = "alice", password: str = "${env:SEGSCOPE_TEST_KAFKA_PASSWORD}"
) -> list[str]:
    """--kafka-option arguments for SASL_SSL as ``user`` (a SCRAM user, or PLAIN), the CA the test made."""
    mechanism = SCRAM_USERS[user][0] if user in SCRAM_USERS else "PLAIN"
    options = {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(secure["certs"] / "ca.pem"),
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }
    return [word for key, value in options.items() for word in ("--kafka-option", f"{key}={value}")]


def misconfiguration(secure: dict[str, Any], name: str, folder: Path) -> tuple[list[str], dict[str, str], str]:
    """(stream arguments, environment, what its one line says) for one misconfiguration."""
    wrong_file = folder / "wrong.password"
    wrong_file.write_text(WRONG_PASSWORD)
    sasl = secure["SASL_SSL"]
    cases: dict[str, tuple[list[str], str]] = {
        "missing topic": (["--bootstrap", secure["PLAINTEXT"], "--in-topic", "orders.inn"],
                          "topic 'orders.inn' \\(--in-topic\\) does not exist on 127.0.0.1:.*did you mean 'orders.in'"),
        "unreachable bootstrap": (["--bootstrap", f"127.0.0.1:{free_port()}", "--in-topic", "orders.in",
                                   "--connect-timeout", "4"],
                                  "cannot reach Kafka at 127.0.0.1:.* within 4 s .*Connection refused"),
        "wrong password": (["--bootstrap", sasl, "--in-topic", "orders.in", *sasl_options(secure)],
                           f"Kafka at {sasl} refused the credentials .*SCRAM-SHA-256"),
        "wrong password, from a file": (["--bootstrap", sasl, "--in-topic", "orders.in",
                                         *sasl_options(secure, "bob", f"${{file:{wrong_file}}}")],
                                        "refused the credentials .*SCRAM-SHA-512"),
        "a CA that did not sign the broker": (["--bootstrap", sasl, "--in-topic", "orders.in",
                                               *sasl_options(secure),
                                               "--kafka-option",
                                               f"ssl.ca.location={secure['certs'] / 'other-ca.pem'}"],
                                              "the TLS handshake with Kafka at .* failed .*certificate verify failed"),
        "no client certificate for mutual TLS": (["--bootstrap", secure["SSL"], "--in-topic", "orders.in",
                                                  "--kafka-option", "security.protocol=SSL", "--kafka-option",
                                                  f"ssl.ca.location={secure['certs'] / 'ca.pem'}"],
                                                 "the TLS handshake .* failed .*bad certificate"),
        "plaintext client on the TLS listener": (["--bootstrap", sasl, "--in-topic", "orders.in",
                                                  "--connect-timeout", "4"],
                                                 "cannot reach Kafka at .* within 4 s .*security.protocol"),
        "kafka-python, wrong password": (["--bootstrap", sasl, "--in-topic", "orders.in", "--client",
                                          "kafka-python", "--connect-timeout", "4", *sasl_options(secure)],
                                         "cannot reach Kafka at .* within 4 s \\(kafka-python: .*SASL credentials"),
    }  # fmt: skip
    args, said = cases[name]
    return args, {"SEGSCOPE_TEST_KAFKA_PASSWORD": WRONG_PASSWORD}, said


MISCONFIGURED = [
    "missing topic",
    "unreachable bootstrap",
    "wrong password",
    "wrong password, from a file",
    "a CA that did not sign the broker",
    "no client certificate for mutual TLS",
    "plaintext client on the TLS listener",
    "kafka-python, wrong password",
]


def stream_killed_midway(bundle: Path, bootstrap: str, args: list[str], out_topic: str, n: int) -> None:
    """``segscope stream`` with ``args`` SIGKILLed once ``out_topic`` holds half of ``n`` outputs, then run again
    until it idles: the second run must go on from the committed offsets (and the checkpoints) and exit 0."""
    proc = start_stream(bundle, bootstrap, *args)
    wait_until(lambda: count(bootstrap, out_topic) >= n // 2, timeout=240, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    proc = start_stream(bundle, bootstrap, *args, "--idle-exit", "4")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
