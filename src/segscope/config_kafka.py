"""The sections of a config that say how `segscope stream` talks to Kafka and reads its messages (``kafka``,
``messages``): client properties, TLS and SASL, the schema registry. Left out of bundles (a secret is written
``${env:NAME}`` or ``${file:/path}``, never the value); :class:`segscope.config.SegscopeConfig` holds them."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from segscope._durations import duration_seconds
from segscope._kafka_setup import flatten_section
from segscope._typing import MessageFormat, OutputFormat

__all__ = ["KafkaConfig", "MessagesConfig", "SchemaRegistryConfig"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaConfig(_Frozen):
    """How `segscope stream` connects (its ``--config``): Kafka client properties by their own names (librdkafka's,
    the Java client's for what they share) for both clients, and under ``consumer`` / ``producer`` for one; a
    secret (a password, secret, passphrase or private key) as ``${env:NAME}`` or ``${file:/path}``. Never stored in
    a bundle: the manifest's config leaves this section out."""

    #: Seconds (or a duration: 30s, 2m) to wait for the cluster at start before giving up with one line.
    connect_timeout: float = Field(default=30.0, gt=0)
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)
    consumer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    producer: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: Any) -> Any:
        out = flatten_section(data)
        timeout = out.get("connect_timeout")
        if isinstance(timeout, str):
            out["connect_timeout"] = duration_seconds(timeout)
        return out


_SECRET_REFERENCE = re.compile(r"\$\{(env|file):.+\}")


class SchemaRegistryConfig(_Frozen):
    """The schema registry of Avro or Protobuf messages: any service with Confluent's REST API."""

    url: str | None = None
    #: ``user:password``, written ``${env:NAME}`` or ``${file:/path}`` (never the secret itself)
    basic_auth: str | None = None
    #: Seconds (or a duration: 30s, 2m) to keep retrying a registry that does not answer before the stream stops.
    timeout: float = Field(default=30.0, gt=0)
    #: Properties of confluent-kafka's registry client: ssl.ca.location, ssl.certificate.location, ...
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _durations(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("timeout"), str):
            data = {**data, "timeout": duration_seconds(data["timeout"])}
        return data

    @model_validator(mode="after")
    def _no_secret_written_out(self) -> SchemaRegistryConfig:
        if self.basic_auth is not None and not _SECRET_REFERENCE.fullmatch(self.basic_auth.strip()):
            raise ValueError("write basic_auth as ${env:NAME} or ${file:/path}, not the secret itself")
        return self


class MessagesConfig(_Frozen):
    """How `segscope stream --config` reads the input topic's messages and writes the scored records."""

    #: json, or avro / protobuf in the schema registry's wire format
    format: MessageFormat = "json"
    #: json, or avro (Avro input only: its schema plus the scored fields)
    output: OutputFormat = "json"
    schema_registry: SchemaRegistryConfig = Field(default_factory=SchemaRegistryConfig)
