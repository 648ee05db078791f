from __future__ import annotations

import ast
import functools
import inspect
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, settings

from segscope import cli
from segscope.config import SegscopeConfig
from segscope.model import Model
from segscope.testing.data import make_transactions

# Property tests are judged on what they find, not on how fast this machine draws their examples: a shared or
# slower CI machine (two cores running the suite beside other work) must not fail them on time alone.
settings.register_profile("any-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("any-machine")


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


@pytest.fixture(scope="session")
def fine_tuned_transactions(segments_history: pl.DataFrame) -> tuple[Model, dict[str, Any]]:
    """(a version fine-tuned on 40 labelled frauds and 40 normals of the transactions, its promotion report)."""
    from segscope.labels.parse import normalise_labels
    from segscope.tuning import finetune

    history = segments_history
    base = Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(history)
    fraud = history.filter(pl.col("is_fraud") == 1).head(40)["txn_id"].to_list()
    normal = history.filter(pl.col("is_fraud") == 0).head(40)["txn_id"].to_list()
    labels = normalise_labels(pl.DataFrame({"id": fraud + normal, "label": [1] * len(fraud) + [0] * len(normal)}))
    return finetune(base, history, labels)


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


@pytest.fixture(autouse=True)
def _reap_streams() -> Iterator[None]:
    """A test that fails while its ``segscope stream`` processes run leaves none behind for the next test."""
    yield
    helpers = sys.modules.get("tests.kafka_helpers")  # only where a test started streams through it
    if helpers is not None:
        helpers.reap_streams()


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


@dataclass(frozen=True)
class Registry:
    """A schema registry the tests started: its URL, and the basic auth it requires (a password in a file)."""

    url: str
    user: str
    password_file: Path
    data: Path
    clients: list[Any] = field(default_factory=list)  # closed when the session ends

    @property
    def auth(self) -> str:
        return f"{self.user}:{self.password_file.read_text().strip()}"

    def client(self) -> Any:
        """confluent-kafka's client of it: what a producer outside segscope uses."""
        from confluent_kafka.schema_registry import SchemaRegistryClient

        client = SchemaRegistryClient({"url": self.url, "basic.auth.user.info": self.auth})
        self.clients.append(client)
        return client


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real schema registry for the session (Apicurio Registry from Maven Central, by
    connectors/schema-registry/registry), requiring basic auth, as a platform's would."""
    from tests.kafka_helpers import free_port
    from tests.kafka_helpers import schema_registry as registry

    data = tmp_path_factory.mktemp("registry")
    secret = data / "password"
    secret.write_text("s3cret-registry-pw\n")
    url = registry("start", data, free_port(), "--user", "scorer", "--password-file", str(secret))
    found = Registry(url, "scorer", secret, data)
    try:
        yield found
    finally:
        for client in found.clients:
            client.close()
        registry("stop", data)


@pytest.fixture(scope="session")
def kafka_secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A second broker with TLS and SASL listeners (tests/kafka_helpers.start_secure_broker), certificates made
    for it: its addresses by listener name, the certificates' folder ("certs") and its data folder ("data")."""
    from tests.kafka_helpers import broker, make_certificates, start_secure_broker

    root = tmp_path_factory.mktemp("kafka-secure")
    certs = make_certificates(root / "certs")
    data = root / "data"
    try:
        yield {**start_secure_broker(data, certs), "certs": certs, "data": data}
    finally:
        broker("stop", data)


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


# ------------------------------------------------------------------------------------------------------ lanes
# Markers are set here from what a test uses, never by hand, so that `make test-fast` (pytest -m "not kafka and not
# spark and not postgres and not browser and not slow") needs none of the services: a test is `kafka` when it
# uses a broker fixture or a tests/kafka_helpers function that talks to a broker, `spark` when it uses the
# `spark` session fixture, tests/spark_helpers, segscope.spark or `--engine spark`, `postgres` when it uses
# `postgres_url` (store_url's postgresql case), `browser` when it starts Chromium (tests/browser.py). Fixtures
# count with everything they use in turn, and helper functions of the test's module with what they call.
SERVICE_FIXTURES = {
    "kafka_broker": "kafka",
    "kafka_bootstrap": "kafka",
    "schema_registry": "kafka",  # a Java service started like the broker, used with it
    "kafka_secure": "kafka",
    "postgres_url": "postgres",
    "spark": "spark",
}
#: kafka_helpers functions that need no broker (a free port, record encoding, waiting, stopping a process)
NO_BROKER = frozenset(
    {
        "free_port",
        "records",
        "wait_until",
        "terminate",
        "make_certificates",
        "sasl_options",
        "misconfiguration",
        "scrape_metrics",
    }
)
#: The heaviest of the tests that need no service: every one at 10 s or more in `pytest --durations=40` over the
#: 842 of them (seconds of its call on 2 cores shared with two other test runs, load average 6: 44 min in all, of
#: which these took 40). A test id, or a parametrized case's full id. `make test` runs them; `make test-fast`
#: leaves them out. tests/test_lanes.py checks that each still names a test.
SLOW: dict[str, float] = {
    "tests/test_torch_learner.py::test_torch_fine_tuning_improves_and_is_deterministic": 456,
    "tests/test_security_bundles.py::test_concurrent_finetunes_promote_at_most_one": 300,
    "tests/test_finetune.py::test_the_learner_sees_which_category": 113,
    "tests/test_finetune.py::test_blend_is_chosen_out_of_fold_and_never_below_the_learner": 107,
    "tests/test_finetune.py::test_a_few_positive_labels_promote_when_the_evidence_is_there": 102,
    "tests/test_finetune.py::test_fine_tuning_improves_precision_on_new_data": 101,
    "tests/test_pipeline.py::test_a_record_scores_the_same_alone": 100,
    "tests/test_security_round2_cli.py::test_markup_in_data_names_paths_and_ids_is_printed_literally": 87,
    "tests/test_cli.py::test_demo_runs": 84,
    "tests/test_finetune.py::test_the_gate_refuses_a_model_trained_on_wrong_labels": 82,
    "tests/test_finetune.py::test_few_anomalies_take_the_prior_blend": 81,
    "tests/test_finetune.py::test_the_blend_is_compared_out_of_fold_only_from_prior_below_labelled_anomalies": 71,
    "tests/test_finetune.py::test_fine_tuned_scores_are_batch_independent": 51,
    "tests/test_security_model_files.py::test_an_expression_edited_into_a_bundle_reads_nothing": 50,
    "tests/test_finetune.py::test_registry_promote_rollback_and_hot_path": 49,
    "tests/test_finetune.py::test_high_cardinality_categories_are_target_encoded": 47,
    "tests/test_finetune.py::test_cli_finetune_promote_rollback": 46,
    "tests/test_segments.py::test_learner_sees_segment_membership_and_confidence": 43,
    "tests/test_finetune.py::test_tree_depth_is_chosen_out_of_fold_only_when_labels_show_it": 51,
    "tests/test_fuzz_bundles.py::test_mutated_bundles_score_or_are_refused_never_crash[finetuned-20000]": 37,
    "tests/test_fuzz_bundles.py::test_mutated_bundles_score_or_are_refused_never_crash[detectors-0]": 14,
    "tests/test_security_model_files.py::test_arrays_of_the_wrong_shape_are_refused": 35,
    "tests/test_security_model_files.py::test_crafted_detector_arrays_are_refused_not_crashed_on": 80,
    "tests/test_finetune.py::test_supervised_score_is_a_calibrated_probability": 30,
    "tests/test_segments.py::test_boundaries_between_touching_groups_follow_the_features": 27,
    "tests/test_store.py::test_eight_writers_lose_nothing": 24,
    "tests/test_learn.py::test_the_loop_on_sqlite_and_postgresql[sqlite]": 27,
    "tests/test_security_bundles.py::test_concurrent_promotions_keep_the_log_true": 21,
    "tests/test_torch_learner.py::test_continued_training_starts_from_the_previous_weights": 20,
    "tests/test_finetune.py::test_the_gate_is_time_ordered_on_an_entity_event_time": 19,
    "tests/test_finetune.py::test_one_labelled_anomaly_never_makes_the_served_model_worse": 17,
    "tests/test_segments.py::test_a_refit_matches_segments_through_the_previous_models_own_features": 16,
    "tests/test_security_bundles.py::test_unreadable_bundle_is_a_one_line_error": 14,
    "tests/test_torch_learner.py::test_torch_bundle_is_safetensors_and_round_trips": 14,
    "tests/test_finetune_store.py::test_finetune_from_the_store_alone": 12,
    "tests/test_finetune.py::test_proximity_is_not_decided_by_one_heavy_tailed_column": 11,
    "tests/test_common.py::test_learner_conformance[torch-check_learner_learns_and_round_trips]": 11,
}


@functools.cache
def _helper_marks() -> dict[str, tuple[str, frozenset[str]]]:
    """{helper module: (marker, the names in it that need the service)}, read from the helpers' source (importing
    them would import the clients)."""

    def functions(name: str) -> frozenset[str]:
        tree = ast.parse((Path(__file__).parent / f"{name}.py").read_text())
        return frozenset(node.name for node in tree.body if isinstance(node, ast.FunctionDef))

    return {
        "tests.kafka_helpers": ("kafka", functions("kafka_helpers") - NO_BROKER),
        "tests.spark_helpers": ("spark", functions("spark_helpers")),
        "tests.postgres_helpers": ("postgres", functions("postgres_helpers")),
        "tests.browser": ("browser", functions("browser")),
    }


def _unwrap(function: Any) -> Any:
    inner = getattr(getattr(function, "hypothesis", None), "inner_test", None)  # @given wraps the test
    return inspect.unwrap(inner if inner is not None else function)


def marks_from_code(functions: Iterable[Any]) -> set[str]:
    """The service markers that the code of ``functions`` needs: through the helpers it calls (imported at module
    level or inside the function), functions of its own module it calls, segscope.spark, `--engine spark`."""
    helpers = _helper_marks()
    marks: set[str] = set()
    stack = [(f.__code__, f.__globals__) for f in map(_unwrap, functions) if hasattr(f, "__code__")]
    seen: set[types.CodeType] = set()
    while stack:
        code, space = stack.pop()
        if code in seen:
            continue
        seen.add(code)
        names = set(code.co_names)
        consts = {c for c in code.co_consts if isinstance(c, str)}
        if "segscope.spark" in names or {"--engine", "spark"} <= consts:
            marks.add("spark")
        for name in names:
            value = space.get(name)
            if inspect.isfunction(value):
                module, marker_needs = value.__module__, helpers.get(value.__module__)
                if marker_needs is not None and name in marker_needs[1]:
                    marks.add(marker_needs[0])
                elif module == space.get("__name__"):  # a helper of the test's own module
                    stack.append((value.__code__, value.__globals__))
        for module, (marker, needs) in helpers.items():  # `from tests.x import f` inside the function, `x.f(...)`
            if (module in names or any(getattr(space.get(n), "__name__", None) == module for n in names)) and (
                names & needs
            ):
                marks.add(marker)
        stack += [(c, space) for c in code.co_consts if isinstance(c, types.CodeType)]
    return marks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        marks = {SERVICE_FIXTURES[n] for n in item.fixturenames if n in SERVICE_FIXTURES}
        params = getattr(item, "callspec", None)
        if params is not None and params.params.get("store_url") == "postgresql":
            marks.add("postgres")
        definitions = item._fixtureinfo.name2fixturedefs.values()
        fixtures = [d.func for defs in definitions for d in defs if not d.argname.startswith("_")]
        marks |= marks_from_code([item.obj, *fixtures])
        if item.nodeid.split("[")[0] in SLOW or item.nodeid in SLOW:
            marks.add("slow")
        for name in sorted(marks):
            item.add_marker(name)
