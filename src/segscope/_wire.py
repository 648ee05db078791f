"""Confluent's wire format and a schema registry client (``extra: kafka``).

**The wire format** of a message value: the magic byte ``0``, the schema's id as a 4-byte big-endian integer,
then the payload; a Protobuf payload is preceded by the message's indexes in its file (zig-zag varints: a count,
then the indexes; a count of 0 means the first message).

**The registry** (:class:`SchemaRegistry`) is any service with Confluent's REST API (Confluent Schema Registry,
Apicurio Registry's ``/apis/ccompat/v7``, Karapace, Redpanda), reached through confluent-kafka's client (TLS,
basic auth, several URLs). Schemas are cached by id: one registry call per id for the life of the process; an id
the registry does not know is remembered for ``unknown_ttl`` seconds, so a flood of messages naming it costs one
call a minute, not one a message.

**Failures** are of two kinds. A message that names an id the registry does not have is the message's fault: a
:class:`WireError` (the caller dead-letters it, with the reason, and goes on). A registry that cannot answer
(unreachable, timing out, 5xx) is retried with back-off for ``timeout`` seconds and then stops the stream with
one line (:class:`~segscope.exceptions.SourceError`): valid records are never dead-lettered because a service
was down, and nothing past the last written batch is committed, so a restart resumes where it stopped. Refused
credentials (401, 403) stop it at once. Secrets (the basic auth, a password in the URL) are never printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from segscope._deps import require
from segscope._typing import MessageFormat, OutputFormat
from segscope.exceptions import ConfigError, SinkError, SourceError

__all__ = [
    "MAGIC",
    "RegistrySettings",
    "SchemaRegistry",
    "WireError",
    "WireSettings",
    "frame",
    "resolve_secret",
    "schema_id",
    "shown_url",
    "wire_settings",
    "zigzag_indexes",
]

log = logging.getLogger("segscope.stream")

MAGIC = 0
_T = TypeVar("_T")
_REFERENCE = re.compile(r"\$\{(env|file):(.+)\}|(env|file):(.+)")
_RETRIABLE = {408, 429, 500, 502, 503, 504}


class WireError(ValueError):
    """A message that cannot be decoded (or a scored record that cannot be encoded); the text is the reason."""


def schema_id(raw: bytes) -> int:
    """The schema id of a message in the wire format, or :class:`WireError` saying why it is not one."""
    if len(raw) < 5 or raw[0] != MAGIC:
        if not raw:
            raise WireError("empty message: the value has 0 bytes, so there is no schema id or record")
        first = f"first byte 0x{raw[0]:02x}" if raw[0] != MAGIC else f"only {len(raw)} bytes"
        hint = " (a JSON message? use --format json)" if raw[:1] in (b"{", b"[", b" ") else ""
        raise WireError(
            f"not in the schema registry's wire format: {first}, expected the magic byte 0 and a 4-byte schema id{hint}"
        )
    return int.from_bytes(raw[1:5], "big")


def frame(schema: int, payload: bytes) -> bytes:
    """A payload in the wire format of schema id ``schema``."""
    return bytes((MAGIC,)) + schema.to_bytes(4, "big") + payload


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise WireError("the Protobuf message indexes after the schema id are cut short or malformed")
        byte = raw[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos  # zig-zag
        shift += 7


def zigzag_indexes(raw: bytes, pos: int = 5) -> tuple[tuple[int, ...], int]:
    """The message indexes that follow a Protobuf message's schema id, and where its payload starts."""
    count, pos = _varint(raw, pos)
    if count == 0:
        return (0,), pos
    if count < 0 or count > 64:
        raise WireError(f"the Protobuf message index count is {count}: not a wire-format Protobuf message")
    indexes = []
    for _ in range(count):
        index, pos = _varint(raw, pos)
        indexes.append(index)
    return tuple(indexes), pos


def resolve_secret(value: str, where: str) -> str:
    """``${env:NAME}`` or ``${file:/path}`` resolved; a secret written out in full is refused (configs and
    command lines are read by others: ``ps`` shows arguments)."""
    match = _REFERENCE.fullmatch(value.strip())
    if match is None:
        raise ConfigError(
            f"{where} must be written ${{env:NAME}} or ${{file:/path}} (env:NAME or file:/path on the command line), "
            "not the secret itself"
        )
    kind, name = match.group(1) or match.group(3), (match.group(2) or match.group(4)).strip()
    if kind == "env":
        if name not in os.environ:
            raise ConfigError(f"{where}: the environment variable {name} is not set")
        return os.environ[name]
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"{where}: the file {path} does not exist")
    return path.read_text(encoding="utf-8").strip()


def shown_url(url: str) -> str:
    """The URL(s) without a user or password."""
    parts = []
    for one in url.split(","):
        split = urlsplit(one.strip())
        host = split.hostname or ""
        netloc = host + (f":{split.port}" if split.port else "")
        parts.append(urlunsplit((split.scheme, netloc, split.path, "", "")))
    return ",".join(parts)


@dataclass(frozen=True)
class RegistrySettings:
    """Where the registry is and how to reach it. ``basic_auth`` is ``user:password`` (resolved: see
    :func:`resolve_secret`); ``properties`` go to confluent-kafka's client as they are (``ssl.ca.location``,
    ``ssl.certificate.location``, ``ssl.key.location``, ``bearer.auth.*``)."""

    url: str
    basic_auth: str | None = field(default=None, repr=False)
    properties: Mapping[str, str | int | float | bool] = field(default_factory=dict, repr=False)
    #: seconds to keep retrying a registry that cannot answer before the stream stops
    timeout: float = 30.0
    #: seconds an id the registry does not know is remembered as unknown
    unknown_ttl: float = 60.0

    def __post_init__(self) -> None:
        if not self.url or not all(urlsplit(u.strip()).scheme in ("http", "https") for u in self.url.split(",")):
            raise ConfigError(
                f"the schema registry URL must start with http:// or https://; got {shown_url(self.url)!r}"
            )


@dataclass(frozen=True)
class WireSettings:
    """How a stream's messages are written: its input ``format``, its ``output`` and the registry both use."""

    format: MessageFormat = "json"
    output: OutputFormat = "json"
    registry: RegistrySettings | None = None

    def __post_init__(self) -> None:
        if self.format not in ("json", "avro", "protobuf"):
            raise ConfigError(f"the message format must be json, avro or protobuf; got {self.format!r}")
        if self.output not in ("json", "avro"):
            raise ConfigError(f"the output format must be json or avro; got {self.output!r}")
        if self.format != "json" and self.registry is None:
            raise ConfigError(
                f"{self.format} messages need a schema registry: give its URL (--schema-registry URL, or url in the "
                "config's schema_registry section)"
            )
        if self.output == "avro" and self.format != "avro":
            raise ConfigError(
                "Avro output is the input's Avro schema plus the scored fields, so it needs Avro input "
                f"(--format avro); the input is {self.format}: keep JSON output"
            )


def wire_settings(
    *,
    fmt: str | None,
    output: str | None,
    url: str | None,
    auth: str | None,
    section: Mapping[str, Any] | None,
) -> WireSettings:
    """The stream's :class:`WireSettings`: command-line values over the config's ``messages`` section (``format``,
    ``output``, and ``schema_registry``: ``url``, ``basic_auth``, ``timeout``, ``properties``)."""
    section = section or {}
    registry = dict(section.get("schema_registry") or {})
    url = url or registry.get("url")
    where = "--schema-registry-auth" if auth is not None else "messages.schema_registry.basic_auth"
    auth = auth or registry.get("basic_auth")
    settings = None
    if url is not None:
        settings = RegistrySettings(
            url=url,
            basic_auth=resolve_secret(auth, where) if auth is not None else None,
            properties=dict(registry.get("properties") or {}),
            timeout=float(registry.get("timeout", 30.0)),
        )
    return WireSettings(
        format=(fmt or section.get("format") or "json"),  # type: ignore[arg-type]
        output=(output or section.get("output") or "json"),  # type: ignore[arg-type]
        registry=settings,
    )


class SchemaRegistry:
    """The registry's schemas by id (cached), the versions Protobuf references name, and registration."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.fetches = 0  # registry calls made for schemas (not answered from the cache)
        self._by_id: dict[int, Any] = {}
        self._unknown: dict[int, tuple[float, str]] = {}
        self._versions: dict[tuple[str, int], Any] = {}
        self._client: Any = None

    @property
    def shown(self) -> str:
        return shown_url(self.settings.url)

    def client(self) -> Any:
        if self._client is None:
            registry = require("confluent_kafka.schema_registry", extra="kafka", feature="the schema registry")
            conf: dict[str, Any] = {
                **self.settings.properties,
                "url": self.settings.url,
                "max.retries": 0,  # retried here, against one deadline
                "timeout": min(10.0, self.settings.timeout),
            }
            if self.settings.basic_auth is not None:
                conf["basic.auth.user.info"] = self.settings.basic_auth
            try:
                self._client = registry.SchemaRegistryClient(conf)
            except Exception as exc:  # an unknown property, a missing certificate file
                raise ConfigError(f"schema registry {self.shown}: {self._scrub(exc)}") from None
        return self._client

    def _scrub(self, exc: BaseException) -> str:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        in_url = [p for u in self.settings.url.split(",") if (p := urlsplit(u).password)]
        secrets = [self.settings.basic_auth or "", *in_url]
        for secret in filter(None, secrets):
            text = text.replace(secret, "***")
            for part in secret.split(":", 1):  # the password alone
                if len(part) >= 4:
                    text = text.replace(part, "***")
        return text

    def _call(
        self,
        what: str,
        call: Callable[[], _T],
        stop: type[Exception] = SourceError,
        hint: str = "the stream stops without committing past the last written batch (no record is dead-lettered "
        "for an outage): restart it once the registry is reachable",
    ) -> _T:
        """``call()``, retried with back-off while the registry cannot answer, for ``timeout`` seconds; then (and
        on refused credentials at once) ``stop`` with one line. A 4xx other than those is re-raised."""
        registry_error = require("confluent_kafka.schema_registry", extra="kafka", feature="the schema registry")
        deadline = time.monotonic() + self.settings.timeout
        wait = 0.25
        while True:
            try:
                return call()
            except registry_error.SchemaRegistryError as exc:
                status = int(getattr(exc, "http_status_code", -1) or -1)
                if status in (401, 403):
                    raise stop(
                        f"schema registry {self.shown} refused the request to {what} ({status}: "
                        f"{self._scrub(exc)}): check its basic auth (schema_registry.basic_auth)"
                    ) from None
                if status not in _RETRIABLE:
                    raise
                reason = f"{status}: {self._scrub(exc)}"
            except Exception as exc:  # the network: refused, reset, timed out, TLS
                reason = f"{type(exc).__name__}: {self._scrub(exc)}"
            if time.monotonic() + wait > deadline:
                raise stop(
                    f"schema registry {self.shown} did not answer for {self.settings.timeout:.0f} s ({reason}) "
                    f"when asked to {what}; {hint}"
                ) from None
            log.warning("schema registry %s: %s; retrying in %.1f s", self.shown, reason, wait)
            time.sleep(wait)
            wait = min(wait * 2, 5.0)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def check(self) -> None:
        """Reach the registry once (its global compatibility setting): at start, an unreachable registry (after
        ``timeout``) or refused credentials are one line, before any message is read."""
        registry = require("confluent_kafka.schema_registry", extra="kafka", feature="the schema registry")
        with contextlib.suppress(registry.SchemaRegistryError):  # it answered (without that endpoint): reachable
            self._call(
                "answer at start",
                lambda: self.client().get_compatibility(),
                hint="check its URL (--schema-registry, or url in the config's messages.schema_registry) and that "
                "it is up",
            )

    def schema(self, schema: int) -> Any:
        """The registered schema of id ``schema`` (confluent-kafka's ``Schema``: ``schema_str``,
        ``schema_type``, ``references``), or :class:`WireError` when the registry has no such id."""
        found = self._by_id.get(schema)
        if found is not None:
            return found
        unknown = self._unknown.get(schema)
        if unknown is not None and time.monotonic() < unknown[0]:
            raise WireError(unknown[1])
        registry = require("confluent_kafka.schema_registry", extra="kafka", feature="the schema registry")
        self.fetches += 1
        try:
            found = self._call(f"fetch schema id {schema}", lambda: self.client().get_schema(schema))
        except registry.SchemaRegistryError as exc:
            if int(getattr(exc, "http_status_code", -1) or -1) != 404:
                raise SourceError(f"schema registry {self.shown}: schema id {schema}: {self._scrub(exc)}") from None
            reason = (
                f"unknown schema id {schema}: the schema registry {self.shown} has no schema with this id "
                f"({self._scrub(exc)})"
            )
            self._unknown[schema] = (time.monotonic() + self.settings.unknown_ttl, reason)
            raise WireError(reason) from None
        self._by_id[schema] = found
        return found

    def version(self, subject: str, version: int) -> Any:
        """A subject's version (what a schema reference names)."""
        key = (subject, version)
        if key not in self._versions:
            self.fetches += 1
            registered = self._call(
                f"fetch {subject} version {version}", lambda: self.client().get_version(subject, version)
            )
            self._versions[key] = registered.schema
        return self._versions[key]

    def register(self, subject: str, text: str, kind: str, references: list[Any] | None = None) -> int:
        """Register a schema under ``subject`` (or find it there); its id. A registry that refuses it (an
        incompatible change under the subject's compatibility rule) stops the stream with the reason."""
        registry = require("confluent_kafka.schema_registry", extra="kafka", feature="the schema registry")
        schema = registry.Schema(text, kind, references or [])
        try:
            found = self._call(
                f"register a schema under {subject}", lambda: self.client().register_schema(subject, schema), SinkError
            )
            return int(found)
        except registry.SchemaRegistryError as exc:
            raise SinkError(
                f"schema registry {self.shown} refused the output schema under subject {subject} "
                f"({getattr(exc, 'http_status_code', '?')}: {self._scrub(exc)}): allow the change in the subject's "
                "compatibility setting, or write to a new topic"
            ) from None
