"""A bundle or config handed over by someone else, round two: expressions that would read files or reach the
network, crafted model arrays that crashed the compiled kernels or XGBoost, arrays that ask for gigabytes, and a
manifest edited without its checksum. Every case is one line and exit 2, never a crash, a read or a request."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segscope import BundleError, Model
from segscope.config import SegscopeConfig, load_config
from segscope.exceptions import ConfigError, DataError
from segscope.expressions import FUNCTIONS, compile_expression, expression_columns
from segscope.supervised.xgb import XGBoostLearner, check_booster_json
from tests.fuzz_bundle import edit_npz
from tests.fuzz_bundle import rehash as _rehash

ROOT = Path(__file__).resolve().parents[1]
SEGSCOPE = [sys.executable, "-m", "segscope.cli"]


def _score(bundle: Path, data: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """In a child process: a crash shows as a signal (rc 139), not as a failed test run."""
    return subprocess.run(
        [*SEGSCOPE, "score", "--bundle", str(bundle), str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def _one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ expressions without I/O
PACK_EXPRESSIONS = [
    "ln(amount + 1)",
    "ln(bytes_out + 1) - ln(bytes_in + 1)",
    "bytes_out / (bytes_in + 1)",
    "abs(amount - 50) * 2 % 7",
    "CASE WHEN amount > 50 THEN 1 ELSE 0 END",
    "CAST(amount AS INTEGER)",
    "amount >= 10 AND NOT country IS NULL",
    "lower(country) || '-' || upper(country)",
    "round(sqrt(amount) / 3, 2)",
    "coalesce(country, 'none')",
    'power("amount", 2) + -1',
    "log10(amount + 1) + log(amount + 1, 2)",
]


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    return pl.DataFrame(
        {
            "amount": rng.gamma(2.0, 30.0, 200),
            "bytes_out": rng.integers(0, 10_000, 200),
            "bytes_in": rng.integers(0, 10_000, 200),
            "country": rng.choice(["FR", "de", None], 200).tolist(),
        }
    )


@pytest.mark.parametrize("text", PACK_EXPRESSIONS)
def test_expressions_compute_what_polars_sql_computed(frame: pl.DataFrame, text: str) -> None:
    """Configs and bundles written for Polars SQL keep their values (the old evaluator is the oracle here)."""
    ours = frame.select(compile_expression(text).alias("v")).to_series()
    theirs = frame.select(pl.sql_expr(text).alias("v")).to_series()
    if ours.dtype.is_numeric():
        np.testing.assert_allclose(
            ours.cast(pl.Float64).fill_null(np.nan).to_numpy(),
            theirs.cast(pl.Float64).fill_null(np.nan).to_numpy(),
            rtol=1e-12,
            equal_nan=True,
        )
    else:
        assert ours.to_list() == theirs.to_list()


def test_expression_columns_are_what_it_reads() -> None:
    assert expression_columns('ln(bytes_out + 1) - ln("bytes in" + 1) + bytes_out') == ["bytes_out", "bytes in"]


@pytest.fixture
def http_hits() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"nope\n1\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/x.csv", hits
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "template",
    [
        "amount IN (SELECT nope FROM read_csv('{secret}'))",
        "amount IN (SELECT nope FROM read_csv('{url}'))",
        "read_csv('{secret}')",
        "read_parquet('{folder}/*.parquet')",
        "(SELECT * FROM read_ndjson('{secret}'))",
    ],
)
def test_expressions_cannot_read_files_or_reach_the_network(
    frame: pl.DataFrame, tmp_path: Path, http_hits: tuple[str, list[str]], template: str
) -> None:
    url, hits = http_hits
    secret = tmp_path / "secret.env"
    secret.write_text("DB_PASSWORD=hunter2\n")
    text = template.format(secret=secret, url=url, folder=tmp_path)
    with pytest.raises(ConfigError) as caught:
        compile_expression(text)
    assert "hunter2" not in str(caught.value) and "DB_PASSWORD" not in str(caught.value)
    from segscope.features.entity import _evaluate

    with pytest.raises(DataError) as evaluated:
        _evaluate(frame, text)
    assert "hunter2" not in str(evaluated.value)
    assert hits == []


_TOKENS = [*sorted(FUNCTIONS), "amount", "country", '"amount"', "1", "2.5e3", "'x'", "''", "(", ")", ",", "+", "-"]
_TOKENS += ["*", "/", "%", "||", "=", "<>", "<=", "AND", "OR", "NOT", "IS", "NULL", "CASE", "WHEN", "THEN", "ELSE"]
_TOKENS += ["END", "CAST", "AS", "INT", "read_csv", "SELECT", "FROM", ";", "[", "$", "\\"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_TOKENS), max_size=25))
def test_fuzzed_expressions_compile_or_refuse_in_one_line(frame: pl.DataFrame, words: list[str]) -> None:
    """Any token soup: a Polars expression, or a ConfigError; evaluating it is a value or a DataError."""
    from segscope.features.entity import _evaluate

    text = " ".join(words)
    messages = []
    try:
        assert isinstance(compile_expression(text), pl.Expr)
        _evaluate(frame, text)
    except (ConfigError, DataError) as exc:
        messages.append(str(exc))
    assert all("\n" not in m and m for m in messages)


def test_a_config_with_a_file_reading_expression_is_refused_at_load(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "entities:\n  - key: card_id\n    features:\n"
        "      - {kind: zscore, of: \"amount IN (SELECT nope FROM read_csv('/etc/hostname'))\", window: 5, name: z}\n"
    )
    with pytest.raises(ConfigError, match="not an allowed function|unexpected") as caught:
        load_config(config)
    assert Path("/etc/hostname").read_text().strip() not in str(caught.value)


@pytest.fixture(scope="module")
def entity_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from segscope.testing.data import make_transactions

    folder = tmp_path_factory.mktemp("entity")
    history = make_transactions(1500, seed=0)
    cfg = SegscopeConfig.model_validate(
        {
            "features": {"id_column": "txn_id", "drop": ["is_fraud"]},
            "entities": [
                {
                    "key": "merchant_category",
                    "features": [{"kind": "zscore", "of": "ln(amount + 1)", "window": 20, "name": "amount_z"}],
                }
            ],
        }
    )
    Model(cfg).fit(history).save(folder / "bundle")
    make_transactions(300, seed=1).write_csv(folder / "new.csv")
    return folder / "bundle", folder / "new.csv"


def test_an_expression_edited_into_a_bundle_reads_nothing(
    entity_files: tuple[Path, Path], tmp_path: Path, http_hits: tuple[str, list[str]]
) -> None:
    """The red team's attack: the manifest's config edited (and every checksum recomputed) so that scoring
    evaluates SQL that reads /etc/passwd or fetches a URL."""
    source, data = entity_files
    url, hits = http_hits
    for i, of in enumerate(
        [
            "amount IN (SELECT nope FROM read_csv('/etc/passwd'))",
            f"amount IN (SELECT nope FROM read_csv('{url}'))",
        ]
    ):
        bundle = tmp_path / f"b{i}"
        import shutil

        shutil.copytree(source, bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["config"]["entities"][0]["features"][0]["of"] = of
        _rehash(bundle, manifest)
        result = _score(bundle, data, tmp_path / f"out{i}.csv")
        line = _one_line(result)
        assert "root:" not in line and not (tmp_path / f"out{i}.csv").exists()
    assert hits == []


def test_a_manifest_edited_without_its_checksum_is_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"]["top_k_reasons"] = 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest.json does not match its own checksum"):
        Model.load(copy)


# ------------------------------------------------------------------ crafted arrays
@pytest.fixture
def copy_of(bundle: Path, tmp_path: Path) -> Callable[[str], Path]:
    import shutil

    def copy(name: str) -> Path:
        shutil.copytree(bundle, tmp_path / name)
        return tmp_path / name

    return copy


def _set(key: str, index: tuple[int, ...], value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        array = arrays[key].astype(np.float64) if arrays[key].dtype.kind in "iu" and value > 2**31 else arrays[key]
        array[index] = value
        arrays[key] = array

    return edit


def _detector_part(bundle: Path, name: str) -> str:
    return next(p.stem for p in (bundle / "arrays").glob(f"detector-*-{name}.npz"))


@pytest.mark.parametrize(
    ("detector", "key", "index", "value", "message"),
    [
        ("iforest", "feature", (0, 0), 2e9, "feature numbers must lie in"),
        ("iforest", "feature", (0, 0), -5, "feature numbers must lie in"),
        ("iforest", "n_features", (0,), 400, "fitted on 400 features"),
        ("ecod", "skew_sign", (0,), np.nan, "not finite"),
    ],
)
def test_crafted_detector_arrays_are_refused_not_crashed_on(
    copy_of, files: Path, tmp_path: Path, detector: str, key: str, index: tuple[int, ...], value: float, message: str
) -> None:
    bundle = copy_of("crafted")
    edit_npz(bundle, _detector_part(bundle, detector), _set(key, index, value))
    _one_line(_score(bundle, files / "new.csv", tmp_path / "out.csv"), message)


def test_arrays_of_the_wrong_shape_are_refused(copy_of, files: Path, tmp_path: Path) -> None:
    bundle = copy_of("shapes")

    def drop_a_column(arrays: dict[str, np.ndarray]) -> None:
        arrays["feature"] = arrays["feature"][:, :-1]

    edit_npz(bundle, _detector_part(bundle, "iforest"), drop_a_column)
    _one_line(_score(bundle, files / "new.csv", tmp_path / "out.csv"), "'feature' has shape")
    ecdf = copy_of("ecdf")

    def fewer_features(arrays: dict[str, np.ndarray]) -> None:
        arrays["sorted_ref"] = arrays["sorted_ref"][:1]
        arrays["skew_sign"] = arrays["skew_sign"][:1]

    edit_npz(ecdf, _detector_part(ecdf, "ecod"), fewer_features)
    _one_line(_score(ecdf, files / "new.csv", tmp_path / "out2.csv"), "fitted on 1 features")


def test_an_array_header_asking_for_gigabytes_is_refused_before_allocating(copy_of) -> None:
    bundle = copy_of("huge")
    path = bundle / "arrays" / "explainer.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1)))
    header["shape"] = (1_000_000, 1_000)  # 8 GB declared, a few bytes held
    body = io_bytes(header)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("sorted_ref.npy", body)
    _rehash(bundle)
    with pytest.raises(BundleError, match="declares shape"):
        Model.load(bundle)


def io_bytes(header: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    buffer.write(np.zeros(10).tobytes())
    return buffer.getvalue()


def test_a_bool_array_cannot_carry_bytes(copy_of) -> None:
    bundle = copy_of("bools")
    path = bundle / "arrays" / "explainer.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["hidden"] = np.frombuffer(b"\x80\x04hidden", dtype=np.bool_)
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    _rehash(bundle)
    with pytest.raises(BundleError, match="booleans with other bytes"):
        Model.load(bundle)


def test_a_segment_forest_with_a_loop_or_a_far_feature_is_refused(segments_model: Model, tmp_path: Path) -> None:
    source = segments_model.save(tmp_path / "segments")
    import shutil

    for name, key, value, message in [
        ("loop", "left", 0, "child comes before it"),
        ("far", "feature", 10**6, "feature numbers must lie in"),
        ("outside", "right", 10**8, "right children must lie in"),
    ]:
        bundle = tmp_path / name
        shutil.copytree(source, bundle)

        def edit(arrays: dict[str, np.ndarray], key: str = key, value: int = value) -> None:
            inner = int(np.flatnonzero(arrays["left"] >= 0)[1])
            arrays[key][inner] = value

        edit_npz(bundle, "segmenter", edit)
        with pytest.raises(BundleError, match=message):
            Model.load(bundle)


# ------------------------------------------------------------------ XGBoost JSON
@pytest.fixture(scope="module")
def booster_json() -> bytes:
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    y = (x[:, 0] + x[:, 3] > 0.5).astype(int)
    booster = xgb.train({"max_depth": 3, "objective": "binary:logistic"}, xgb.DMatrix(x, y), 5)
    return bytes(booster.save_raw(raw_format="json"))


def test_a_booster_xgboost_wrote_is_accepted(booster_json: bytes) -> None:
    check_booster_json(booster_json)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("left_children", 10**9, "outside the tree"),
        ("split_indices", 10**6, "feature number outside"),
        ("right_children", 0, "outside the tree or before the node"),
        ("parents", 5, "parent does not match"),
        ("split_type", 1, "categorical splits and their category lists"),
    ],
)
def test_crafted_booster_json_is_refused_before_xgboost_reads_it(
    booster_json: bytes, tmp_path: Path, key: str, value: int, message: str
) -> None:
    model = json.loads(booster_json)
    tree = model["learner"]["gradient_booster"]["model"]["trees"][0]
    position = 0 if key != "parents" else 1
    tree[key][position] = value
    with pytest.raises(BundleError, match=message):
        XGBoostLearner().load_artifact(json.dumps(model).encode())  # what a bundle load calls


# ------------------------------------------------------------------ configs and manifests that blow up
def _alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(["nosuch_key:", *("  " + line for line in lines)]) + "\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path, levels: int) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(levels))
    with pytest.raises(ConfigError, match="expands to over") as caught:
        load_config(path)
    assert len(str(caught.value)) < 500


def test_a_huge_unknown_entry_is_reported_in_a_short_line(tmp_path: Path) -> None:
    path = tmp_path / "wide.yaml"
    path.write_text("nosuch_key:\n" + "".join(f"  k{i}: {'v' * 50}\n" for i in range(5000)))
    with pytest.raises(ConfigError, match="nosuch_key") as caught:
        load_config(path)
    assert len(str(caught.value)) < 500


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("latin1.toml", "combine = 'mean'\n# caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("deep.toml", b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply|not valid TOML"),
        ("deep.yaml", b"x: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", "nested"),
        ("loop.yaml", b"x: &a [*a]\n", "nested"),
    ],
)
def test_unreadable_configs_are_one_line(tmp_path: Path, name: str, body: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_a_deeply_nested_manifest_is_one_line(copy_of) -> None:
    bundle = copy_of("deep")
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        Model.load(bundle)


def test_an_unknown_pyod_parameter_is_a_config_error(history: pl.DataFrame) -> None:
    from segscope.config import DetectorConfig

    cfg = SegscopeConfig(detectors=(DetectorConfig(name="pyod", params={"model": "LOF", "n_neigbors": 5}),))
    with pytest.raises(ConfigError, match=r"LOF has no parameter\(s\) \['n_neigbors'\]"):
        Model(cfg.with_features(id_column="txn_id", drop=("is_fraud",))).fit(history.head(300))


@pytest.mark.parametrize("name", ["score", "reasons", "is_alert", "id"])
def test_an_entity_feature_cannot_shadow_a_scored_column(history: pl.DataFrame, name: str) -> None:
    cfg = SegscopeConfig.model_validate(
        {
            "features": {"id_column": "txn_id", "drop": ["is_fraud"]},
            "entities": [{"key": "merchant_category", "features": [{"kind": "since_last", "name": name}]}],
        }
    )
    with pytest.raises(ConfigError, match="columns segscope adds to every scored record"):
        Model(cfg).fit(history.head(300))


def test_removing_drift_json_with_its_entry_is_refused(copy_of) -> None:
    bundle = copy_of("nodrift")
    (bundle / "drift.json").unlink()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["drift_reference"] == "drift.json"
    del manifest["files"]["drift.json"]
    _rehash(bundle, manifest)
    with pytest.raises(BundleError, match="names drift.json but the bundle does not hold it"):
        Model.load(bundle)
