"""How a Kafka client is set up: its settings, and its first contact with the cluster.

**Settings** (:class:`KafkaSettings`) are Kafka's own property names (librdkafka's, which are the Java client's
for everything the two share), from the config's ``kafka`` section and ``--kafka-option key=value``, laid over
segscope's defaults. Keys under ``consumer.`` or ``producer.`` go to that client only; the others go to both,
except the keys librdkafka documents as consumer-only or producer-only, which go to that one. Keys a delivery
guarantee depends on are refused with the reason. A value written ``${env:NAME}`` or ``${file:/path}`` is read
from the environment or a file when the client is built; secrets (a key naming a password, a secret, a passphrase
or a private key) must be written that way, and what they resolve to is masked (``***``) in everything segscope
prints (:func:`redact`). kafka-python takes the same names, translated (:func:`kafka_python_config`).

**First contact** (:func:`reach`): a bounded wait for the cluster's metadata, which wrong credentials or a failed
TLS handshake end at once with one line; then (:func:`check_topic`) a missing topic is one line naming the topics
that exist. After it, the clients' errors are logged once per distinct error per 30 s with a count of the repeats
(:class:`Contact`, :class:`QuietKafkaLogs`): an outage is a few lines, not thousands.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from segscope.exceptions import ConfigError, SourceError

__all__ = [
    "Connects",
    "Contact",
    "KafkaSettings",
    "QuietKafkaLogs",
    "check_topic",
    "flatten_section",
    "kafka_python_config",
    "log_commit_failure",
    "log_commit_result",
    "python_client",
    "reach",
    "redact",
    "refused_by_client",
]

log = logging.getLogger("segscope.stream")

Value = str | int | float | bool
Role = Literal["consumer", "producer"]


#: librdkafka's consumer-only (C) and producer-only (P) properties (CONFIGURATION.md): a key given for both
#: clients goes only to the one it is for.
def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


CONSUMER_ONLY = _names(
    "group.id group.instance.id partition.assignment.strategy session.timeout.ms heartbeat.interval.ms "
    "group.protocol.type group.protocol group.remote.assignor coordinator.query.interval.ms max.poll.interval.ms "
    "enable.auto.commit auto.commit.interval.ms enable.auto.offset.store queued.min.messages "
    "queued.max.messages.kbytes fetch.wait.max.ms fetch.queue.backoff.ms fetch.message.max.bytes "
    "max.partition.fetch.bytes fetch.max.bytes fetch.min.bytes fetch.error.backoff.ms offset.store.method "
    "isolation.level enable.partition.eof check.crcs auto.commit.enable auto.offset.reset "
    "consume.callback.max.messages"
)
PRODUCER_ONLY = _names(
    "transactional.id transaction.timeout.ms enable.idempotence enable.gapless.guarantee "
    "queue.buffering.max.messages queue.buffering.max.kbytes queue.buffering.max.ms linger.ms "
    "message.send.max.retries retries queue.buffering.backpressure.threshold compression.codec compression.type "
    "batch.num.messages batch.size delivery.report.only.error sticky.partitioning.linger.ms request.required.acks "
    "acks request.timeout.ms message.timeout.ms delivery.timeout.ms partitioner compression.level"
)
_NOT_COMMITTED = (
    "segscope commits a batch's offsets itself, once its outputs are acknowledged (or in its transaction); "
    "the client committing on its own would commit records whose outputs were never written"
)
_ONE_IN_FLIGHT = (
    "segscope's producer keeps one request in flight per broker: with more, librdkafka's idempotent producer can "
    "report a batch refused by a partition changing leader (a new topic, a broker restart) as delivered once a "
    "later batch of that partition is written, and the records of the first are lost"
)
#: Keys segscope sets itself, and why they cannot be overridden.
REFUSED = {
    "enable.auto.commit": _NOT_COMMITTED,
    "auto.commit.enable": _NOT_COMMITTED,
    "enable.auto.offset.store": _NOT_COMMITTED,
    "isolation.level": "use --isolation-level (read_committed, the default, keeps aborted transactions out)",
    "transactional.id": "use --transactional-id with --exactly-once: each process needs its own id, which a "
    "shared setting cannot give",
    "group.id": "use --group (the labels topic's reader takes its group from it too)",
    "compression.type": "use --compression",
    "compression.codec": "use --compression",
    "connect_timeout": "it is segscope's own: use --connect-timeout, or connect_timeout in the config's kafka section",
}
#: What segscope sets on its producer (``consumer.KEY`` may still tune the consumer's own).
PRODUCER_REFUSED = {"max.in.flight.requests.per.connection": _ONE_IN_FLIGHT, "max.in.flight": _ONE_IN_FLIGHT}
EXACTLY_ONCE_REFUSED = {"enable.idempotence": "Kafka transactions (--exactly-once) need the idempotent producer"}
_SECRET = re.compile(r"password|secret|passphrase|private\.key\.pem$|^ssl\.key\.pem$")
_REFERENCE = re.compile(r"\$\{(env|file):(.+)\}", re.IGNORECASE | re.DOTALL)
_MAX_FILE = 1 << 20
_SECRETS: set[str] = set()  # every secret value resolved in this process, masked in what is printed
_SECRETS_LOCK = threading.Lock()


def is_secret(key: str) -> bool:
    return bool(_SECRET.search(key.lower()))


def _refused(key: str, role: str | None, exactly_once: bool = False) -> None:
    producer = role != "consumer"
    why = REFUSED.get(key) or (PRODUCER_REFUSED.get(key) if producer else None)
    why = why or (EXACTLY_ONCE_REFUSED.get(key) if exactly_once and producer else None)
    if why is not None:
        raise ConfigError(f"kafka option {key} cannot be set: {why}")
    if key.endswith("_cb") or key in {"logger", "on_commit", "on_delivery"}:
        raise ConfigError(f"kafka option {key} is a callback segscope sets; remove it")
    if key == "bootstrap.servers" and role is not None:
        raise ConfigError("kafka option bootstrap.servers is for both clients: give it outside consumer./producer.")


def _checked(key: str, value: Any, where: str) -> Value:
    if not isinstance(value, str | int | float | bool) or not key or key != key.strip() or " " in key:
        raise ConfigError(f"{where}: '{key}' must be a Kafka property name with a string, number or true/false value")
    if is_secret(key) and not (isinstance(value, str) and _REFERENCE.fullmatch(value.strip())):
        raise ConfigError(
            f"{where}: {key} is a secret: keep it out of files and command lines, in an environment variable or a "
            "file, and write ${env:NAME} or ${file:/path/to/file}"
        )
    return value


def flatten_section(raw: Any, where: str = "kafka") -> dict[str, Any]:
    """The config's ``kafka`` section as ``{connect_timeout, properties, consumer, producer}``: nested tables
    (TOML's ``security.protocol = ...`` without quotes, YAML's nested maps) joined with dots, ``consumer`` and
    ``producer`` split off, every key and value checked (secrets as references; refused keys)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table/mapping of Kafka properties")
    out: dict[str, Any] = {"properties": {}, "consumer": {}, "producer": {}}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                walk(value, "" if name == "properties" and not prefix else f"{name}.")
            elif name == "connect_timeout" and where != "--kafka-option":
                out["connect_timeout"] = value
            else:
                role, _, rest = name.partition(".")
                section, name = (role, rest) if role in ("consumer", "producer") and rest else ("properties", name)
                out[section][name] = _checked(name, value, where)
                _refused(name, None if section == "properties" else section)

    walk(raw, "")
    return out


@dataclass(frozen=True)
class KafkaSettings:
    """Client properties for both clients, for the consumer only and for the producer only (unresolved: secrets
    stay references until :meth:`resolved`), and how long to wait for the cluster at start (seconds)."""

    properties: tuple[tuple[str, Value], ...] = ()
    consumer: tuple[tuple[str, Value], ...] = ()
    producer: tuple[tuple[str, Value], ...] = ()
    connect_timeout: float = 30.0

    @classmethod
    def build(
        cls, section: Mapping[str, Any] | None = None, options: Iterable[str] = (), connect_timeout: float | None = None
    ) -> KafkaSettings:
        """From a config's flattened ``kafka`` section, then ``--kafka-option key=value`` (which win)."""
        parts: dict[str, dict[str, Value]] = {"properties": {}, "consumer": {}, "producer": {}}
        for name in parts:
            parts[name].update((section or {}).get(name) or {})
        for option in options:
            key, sep, value = option.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"--kafka-option takes key=value (e.g. security.protocol=SASL_SSL); got '{key}'")
            flat = flatten_section({key: value}, where="--kafka-option")
            for name in parts:
                parts[name].update(flat[name])
        timeout = connect_timeout if connect_timeout is not None else (section or {}).get("connect_timeout")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"the connect timeout must be above 0 seconds; got {timeout:g}")
        return cls(
            tuple(parts["properties"].items()),
            tuple(parts["consumer"].items()),
            tuple(parts["producer"].items()),
            30.0 if timeout is None else float(timeout),
        )

    def check(self, *, exactly_once: bool) -> None:
        """Refuse what the chosen delivery guarantee depends on (before anything connects)."""
        for role, items in (("both", self.properties), ("producer", self.producer)):
            for key, _ in items:
                _refused(key, None if role == "both" else role, exactly_once)

    def bootstrap(self, given: str | None) -> str:
        """``--bootstrap``, else ``bootstrap.servers`` of the settings."""
        if given:
            return given
        found = dict(self.properties).get("bootstrap.servers")
        if found is None:
            raise ConfigError("no Kafka address: pass --bootstrap HOST:PORT or set bootstrap.servers in [kafka]")
        return str(resolve("bootstrap.servers", found))

    def for_role(self, role: Role) -> dict[str, Value]:
        """The properties of one client, unresolved: the shared ones meant for it, then its own."""
        other = PRODUCER_ONLY if role == "consumer" else CONSUMER_ONLY
        shared = {k: v for k, v in self.properties if k not in other and k != "bootstrap.servers"}
        return shared | dict(self.consumer if role == "consumer" else self.producer)

    def resolved(self, role: Role) -> dict[str, Value]:
        """The properties of one client with every ``${env:...}`` / ``${file:...}`` read."""
        return {k: resolve(k, v) for k, v in self.for_role(role).items()}


def resolve(key: str, value: Value) -> Value:
    """A value, or what its ``${env:NAME}`` / ``${file:/path}`` reference holds (a secret is remembered, to be
    masked); errors name the key and the reference, never a value."""
    match = _REFERENCE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return value
    kind, ref = match.group(1).lower(), match.group(2).strip()
    if kind == "env":
        found = os.environ.get(ref)
        if found is None:
            raise ConfigError(f"kafka option {key}: environment variable {ref} is not set; set it or fix the name")
    else:
        path = Path(ref)
        try:
            if path.stat().st_size > _MAX_FILE:
                raise ConfigError(f"kafka option {key}: {path} is over 1 MiB; a setting's file holds one value")
            found = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(
                f"kafka option {key}: cannot read {path} ({reason}); fix the ${{file:...}} path"
            ) from None
    if is_secret(key) and len(found) >= 3:
        with _SECRETS_LOCK:
            _SECRETS.add(found)
    return found


def redact(text: str) -> str:
    """``text`` with every secret resolved in this process replaced by ``***``."""
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# ------------------------------------------------------------------------------------------ kafka-python
#: librdkafka names whose kafka-python name is not the same with underscores (per client where they differ).
_PY_NAMES = {
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "ssl.crl.location": "ssl_crlfile",
    "ssl.cipher.suites": "ssl_ciphers",
    "ssl.endpoint.identification.algorithm": "ssl_check_hostname",
    "socket.send.buffer.bytes": "send_buffer_bytes",
    "socket.receive.buffer.bytes": "receive_buffer_bytes",
    "fetch.message.max.bytes": "max_partition_fetch_bytes",
    "fetch.wait.max.ms": "fetch_max_wait_ms",
    "queue.buffering.max.ms": "linger_ms",
    "message.timeout.ms": "delivery_timeout_ms",
    "request.required.acks": "acks",
    "message.send.max.retries": "retries",
}
_PY_PRODUCER_NAMES = {"message.max.bytes": "max_request_size"}
_UPPER = {"security_protocol", "sasl_mechanism"}


def kafka_python_config(config: Mapping[str, Value], role: Role, known: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka-named properties as kafka-python's keyword arguments (``known``: the client's DEFAULT_CONFIG);
    a property kafka-python has no equivalent for is one line saying so."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = (_PY_PRODUCER_NAMES if role == "producer" else {}).get(key) or _PY_NAMES.get(key)
        name = name or key.replace(".", "_")
        if name not in known or name.endswith(("_serializer", "_deserializer", "_provider", "_client", "selector")):
            raise ConfigError(
                f"kafka option {key} has no equivalent in kafka-python's {role}; remove it or use --client confluent"
            )
        default = known[name]
        if name == "ssl_check_hostname":
            value = str(value).lower() not in ("none", "false", "0", "")
        elif isinstance(value, str) and isinstance(default, bool):
            value = value.strip().lower() in ("true", "1", "yes")
        elif isinstance(value, str) and isinstance(default, int | float) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        elif isinstance(value, str) and name in _UPPER:
            value = value.upper()
        out[name] = value
    return out


# ------------------------------------------------------------------------------------------ first contact
_EVERY = 30.0
_AFTER = re.compile(r"\s*\(after \d+ms in state [A-Z_]+(?:, \d+ identical error\(s\) suppressed)?\)")


class _Limiter:
    """One line per distinct message per ``_EVERY`` seconds; the next one shown says how many were held back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, tuple[float, int]] = {}

    def allow(self, message: str) -> str | None:
        key = re.sub(r"\b\d+/\d+\b", "#/#", message)
        now = time.monotonic()
        with self.lock:
            shown, held = self.seen.get(key, (-_EVERY, 0))
            if now - shown < _EVERY:
                self.seen[key] = (shown, held + 1)
                return None
            self.seen[key] = (now, 0)
        return f"{message} (and {held:,} more like it in the last {now - shown:.0f} s)" if held else message


_LIMITER = _Limiter()


class Contact:
    """What one client says about the cluster (librdkafka's error callback): while connecting, remembered (the
    last error, for the time-out's message; a refused login or TLS handshake ends the wait at once), then logged
    through the rate limit."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.connecting = True
        self.last: str | None = None
        self.fatal: str | None = None
        self.tls = 0

    def error(self, err: Any) -> None:
        name, text = err.name(), redact(_AFTER.sub("", err.str()))
        if not self.connecting:
            shown = _LIMITER.allow(text)
            if shown is not None:
                log.warning("kafka: %s", shown)
            return
        if name != "_ALL_BROKERS_DOWN" or self.last is None:
            self.last = text
        self.tls += name == "_SSL" or (name == "_TRANSPORT" and "SSL" in text)
        if name == "_AUTHENTICATION":
            self.fatal = (
                f"Kafka at {self.bootstrap} refused the credentials ({text}); check sasl.mechanism, sasl.username "
                "and sasl.password"
            )
        elif self.tls >= (1 if name == "_SSL" else 2):
            self.fatal = (
                f"the TLS handshake with Kafka at {self.bootstrap} failed ({text}); check security.protocol, "
                "ssl.ca.location (the CA that signed the broker's certificate) and, for mutual TLS, "
                "ssl.certificate.location and ssl.key.location"
            )


def reach(probe: Callable[[float], set[str] | None], contact: Contact, timeout: float) -> set[str]:
    """The cluster's topics, once it answers: ``probe(seconds)`` asks for metadata (None: no answer in time).
    Waits at most ``timeout`` seconds, in slices short enough for a signal to be handled at once."""
    started = time.monotonic()
    deadline, said = started + timeout, False
    while True:
        topics = probe(max(0.05, min(0.5, deadline - time.monotonic())))
        if contact.fatal is not None:
            raise SourceError(contact.fatal)
        if topics is not None:
            contact.connecting = False
            if said:
                log.info("kafka: reached %s", contact.bootstrap)
            return topics
        now = time.monotonic()
        if now >= deadline:
            raise SourceError(
                f"cannot reach Kafka at {contact.bootstrap} within {timeout:g} s ({contact.last or 'no answer'}); "
                "check --bootstrap (or bootstrap.servers), that the broker is up, and that security.protocol is the "
                "listener's (--connect-timeout waits longer)"
            )
        if not said and now - started >= 3:
            said = True
            log.info("kafka: waiting up to %g s for %s (%s)", timeout, contact.bootstrap, contact.last or "no answer")


def check_topic(topics: set[str], topic: str, bootstrap: str, flag: str) -> None:
    """One line when ``topic`` is not on the cluster: the topics that are, the closest name, how to create it."""
    if topic in topics:
        return
    shown = sorted(t for t in topics if not t.startswith("__"))
    close = difflib.get_close_matches(topic, shown, n=1)
    listing = ", ".join(shown[:20]) + (f" and {len(shown) - 20} more" if len(shown) > 20 else "") or "none"
    raise SourceError(
        f"topic '{topic}' ({flag}) does not exist on {bootstrap}; "
        + (f"did you mean '{close[0]}'? " if close else "")
        + f"topics there: {listing}. Fix {flag}, or create it: kafka-topics.sh --bootstrap-server {bootstrap} "
        f"--create --topic {topic} --partitions N"
    )


class QuietKafkaLogs(logging.Filter):
    """For a log handler: kafka-python's repeated lines (an outage) through the rate limit, and secrets masked in
    every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shown: str | None = redact(message)
        if record.name == "kafka" or record.name.startswith("kafka."):
            shown = _LIMITER.allow(shown or "")
            if shown is None:
                return False
        if shown != message:
            record.msg, record.args = shown, ()
        return True


class Connects:
    """The first contact every client makes (``_topics``: one metadata request, None without an answer)."""

    contact: Contact
    connect_timeout: float

    def _topics(self, timeout: float) -> set[str] | None:
        raise NotImplementedError

    def reach(self, topic: str | None = None, flag: str = "--in-topic") -> None:
        """Wait (bounded) until the cluster answers; with a topic, check that it exists (one line if not)."""
        topics = reach(self._topics, self.contact, self.connect_timeout)
        if topic is not None:
            check_topic(topics, topic, self.contact.bootstrap, flag)


def refused_by_client(exc: Exception) -> str:
    """confluent-kafka refusing a client's settings (an unknown property, a key file that does not load)."""
    error: Any = exc.args[0] if exc.args else exc
    text = error.str() if hasattr(error, "str") else str(error)
    return f"the Kafka client refused its settings: {redact(text)}; fix that kafka option"


def python_client(make: Callable[[], Any], bootstrap: str, timeout: float) -> Any:
    """A kafka-python client, which connects in its constructor (``bootstrap_timeout_ms``): its log lines while it
    tries are kept out of the log and the most telling one ends the one-line error if it cannot connect."""
    from kafka.errors import KafkaConfigurationError, KafkaError

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(redact(record.getMessage()))

    logger, keep = logging.getLogger("kafka"), Keep(logging.WARNING)
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(keep)
    try:
        return make()
    except KafkaConfigurationError as exc:
        raise ConfigError(f"kafka-python refused its settings: {redact(str(exc))}; fix that kafka option") from None
    except KafkaError as exc:
        told = [line for line in lines if "CERTIFICATE_VERIFY_FAILED" in line or "SSL" in line] or lines
        reason = told[-1] if told else str(exc)
        raise SourceError(
            f"cannot reach Kafka at {bootstrap} within {timeout:g} s (kafka-python: {reason}); check --bootstrap "
            "(or bootstrap.servers), that the broker is up, security.protocol, the SASL credentials and "
            "ssl.ca.location (--connect-timeout waits longer)"
        ) from None
    except (OSError, ValueError) as exc:  # a certificate or key file that does not load
        raise ConfigError(f"kafka-python cannot use its TLS settings ({redact(str(exc))}); fix them") from None
    finally:
        logger.removeHandler(keep)
        logger.propagate = propagate


def log_commit_failure(reason: str) -> None:
    """A failed commit (a rebalance, a restarting coordinator) is safe: the records come again with the same ids
    and the next commit covers them."""
    shown = _LIMITER.allow(f"commit failed ({reason}); the next commit covers these records")
    if shown is not None:
        log.warning("%s", shown)


def log_commit_result(err: Any, _: Any) -> None:
    """The outcome of an asynchronous commit (confluent-kafka's ``on_commit``)."""
    if err is not None:
        log_commit_failure(err.str())
