from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from segscope import cli
from segscope.config import SegscopeConfig
from segscope.model import Model
from segscope.testing.data import make_transactions


@pytest.fixture(scope="session")
def history() -> pl.DataFrame:
    return make_transactions(4000, seed=0)


@pytest.fixture(scope="session")
def new_records() -> pl.DataFrame:
    return make_transactions(1500, seed=1)


@pytest.fixture(scope="session")
def config() -> SegscopeConfig:
    return SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))


@pytest.fixture(scope="session")
def model(history: pl.DataFrame, config: SegscopeConfig) -> Model:
    return Model(config).fit(history)


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory, history: pl.DataFrame, new_records: pl.DataFrame) -> Path:
    root = tmp_path_factory.mktemp("data")
    history.write_parquet(root / "history.parquet")
    new_records.write_parquet(root / "new.parquet")
    new_records.write_csv(root / "new.csv")
    new_records.write_ndjson(root / "new.ndjson")
    return root


@pytest.fixture(scope="session")
def bundle(files: Path, model: Model) -> Path:
    path = files / "bundle"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def segments_history() -> pl.DataFrame:
    return make_transactions(3000, seed=0)


@pytest.fixture(scope="session")
def segments_model(segments_history: pl.DataFrame) -> Model:
    """A model with segments and segment-aware scoring (UMAP + HDBSCAN take ~30 s: fitted once per session)."""
    from segscope.config import SegmentsConfig

    config = SegscopeConfig(segments=SegmentsConfig(enabled=True, sample_size=2000, aware_scoring=True))
    return Model(config.with_features(id_column="txn_id", drop=("is_fraud",))).fit(segments_history)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run `segscope ARGS` in-process through the real entry point (exit code, stdout, stderr)."""

    def run(*args: str | Path) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["segscope", *map(str, args)])
        capsys.readouterr()
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real Apache Kafka broker for the session, started and stopped by connectors/kafka/broker: (bootstrap
    address, its data folder)."""
    from tests.kafka_helpers import broker, free_port

    data = tmp_path_factory.mktemp("kafka")
    bootstrap = broker("start", data, free_port())
    try:
        yield bootstrap, data
    finally:
        broker("stop", data)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: tuple[str, Path]) -> str:
    return kafka_broker[0]


@pytest.fixture(scope="session")
def stream_bundle(tmp_path_factory: pytest.TempPathFactory, history: pl.DataFrame, config: SegscopeConfig) -> Path:
    path = tmp_path_factory.mktemp("stream") / "bundle"
    Model(config).fit(history).save(path)
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (Debian's package, initdb in a temporary folder)."""
    from tests.postgres_helpers import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty label store: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "labels.db")
    import uuid

    import psycopg

    server = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.replace("postgresql://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name
