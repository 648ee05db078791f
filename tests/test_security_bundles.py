"""Bundles and registries under attack: code smuggled into arrays, manifests edited by hand, paths that leave the
folder, symlinks, CURRENT pointing elsewhere, concurrent promotions. Each case is one a user can be handed."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import multiprocessing
import os
import pickle
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from segscope import BundleError, Model
from segscope import registry as reg
from segscope.bundle import manifest_digest
from segscope.config import DetectorConfig, SegscopeConfig
from segscope.testing.data import make_transactions
from tests.unprivileged import run_cli_unprivileged

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _one_line_error(result, *fragments: str) -> str:
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ") and "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, manifest: dict, *, rehash: bool = True) -> None:
    """Rewrite the manifest as an attacker would: checksums recomputed for every listed file (``rehash``) and the
    manifest's own checksum always (anyone can compute it: it catches accidents, it does not authenticate)."""
    if rehash:
        for rel in manifest.get("files", {}):
            if (bundle / rel).is_file():
                manifest["files"][rel] = hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def pyod_bundle(tmp_path_factory: pytest.TempPathFactory, history: pl.DataFrame) -> Path:
    cfg = SegscopeConfig(
        detectors=(DetectorConfig(name="iforest"), DetectorConfig(name="pyod", params={"model": "LOF"}))
    ).with_features(id_column="txn_id", drop=("is_fraud",))
    path = tmp_path_factory.mktemp("pyod") / "bundle"
    Model(cfg).fit(history.head(1500)).save(path)
    return path


def _smuggle(pyod_bundle: Path, target: Path, marker: Path, *, key: str = "pickle") -> Path:
    """The issue's attack: drop the .pkl, hide a pickle in the detector's .npz as a uint8 array, empty
    executes_code, recompute the checksums."""
    shutil.copytree(pyod_bundle, target)
    pkl = next((target / "arrays").glob("*.pkl"))
    npz = pkl.with_suffix(".npz")
    pkl.unlink()
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = np.frombuffer(pickle.dumps(_Payload(marker)), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    npz.write_bytes(buffer.getvalue())
    manifest = _manifest(target)
    manifest["executes_code"] = []
    del manifest["files"][pkl.relative_to(target).as_posix()]
    _write_manifest(target, manifest)
    return target


@pytest.mark.parametrize("key", ["pickle", "reference_scores"])
def test_pickle_hidden_in_an_array_never_runs(
    run_cli, pyod_bundle: Path, files: Path, tmp_path: Path, key: str
) -> None:
    marker = tmp_path / "pwned"
    bundle = _smuggle(pyod_bundle, tmp_path / "evil", marker, key=key)
    store = tmp_path / "labels.db"
    from segscope.labels import LabelStore

    LabelStore.open(store).close()
    _one_line_error(run_cli("inspect", bundle), "not model state")
    _one_line_error(run_cli("score", files / "new.parquet", "--bundle", bundle, "--out", tmp_path / "o.parquet"))
    _one_line_error(run_cli("serve", "--store", store, "--bundle", bundle, "--port", "1"))
    with pytest.raises(BundleError):
        Model.load(bundle)
    # even a user who trusts the bundle never unpickles an array: the detector's pickle has no file any more
    with pytest.raises(BundleError):
        Model.load(bundle, trusted=True)
    assert not marker.exists()
    assert not (tmp_path / "o.parquet").exists()


def test_a_pickle_file_needs_trust_whatever_the_manifest_says(pyod_bundle: Path, tmp_path: Path) -> None:
    lying = tmp_path / "lying"
    shutil.copytree(pyod_bundle, lying)
    manifest = _manifest(lying)
    assert manifest["executes_code"]
    manifest["executes_code"] = []
    _write_manifest(lying, manifest)
    with pytest.raises(BundleError, match="trust-bundle"):
        Model.load(lying)
    assert Model.load(lying, trusted=True).version == manifest["model_version"]


def test_the_pickle_of_a_trusted_bundle_still_loads(pyod_bundle: Path, new_records: pl.DataFrame) -> None:
    model = Model.load(pyod_bundle, trusted=True)
    assert model.score(new_records.head(50))["score"].is_between(0, 1).all()


@pytest.fixture
def copy_of(bundle: Path, tmp_path: Path) -> Callable[[str], Path]:
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(bundle, target)
        return target

    return copy


def _changed_policy_file(bundle: Path) -> str:
    """Edit the explainer's arrays so that the model would behave differently; returns its relative path."""
    rel = "arrays/calibration.npz"
    with np.load(bundle / rel, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["reference_scores"] = np.zeros_like(arrays["reference_scores"])
    np.savez(bundle / rel, **arrays)
    return rel


def test_removing_a_files_entry_does_not_bypass_its_checksum(run_cli, copy_of) -> None:
    bundle = copy_of("entry")
    rel = _changed_policy_file(bundle)
    manifest = _manifest(bundle)
    del manifest["files"][rel]
    _write_manifest(bundle, manifest, rehash=False)
    _one_line_error(run_cli("inspect", bundle), f"{rel} is not listed in manifest.json")


def test_removing_the_files_table_is_refused(run_cli, copy_of) -> None:
    bundle = copy_of("nofiles")
    _changed_policy_file(bundle)
    manifest = _manifest(bundle)
    del manifest["files"]
    _write_manifest(bundle, manifest, rehash=False)
    result = run_cli("inspect", bundle)
    assert "checksums OK" not in result.out
    _one_line_error(result, "no 'files' table")


def test_files_as_a_list_and_unlisted_extras_are_refused(run_cli, copy_of) -> None:
    bundle = copy_of("listed")
    manifest = _manifest(bundle)
    manifest["files"] = list(manifest["files"])
    _write_manifest(bundle, manifest, rehash=False)
    _one_line_error(run_cli("inspect", bundle), "no 'files' table")
    extra = copy_of("extra")
    (extra / "arrays" / "notes.json").write_text("{}")
    _one_line_error(run_cli("inspect", extra), "arrays/notes.json is not listed")


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "arrays/../../x.json", "./features.json"])
def test_manifest_paths_must_stay_inside(run_cli, copy_of, path: str) -> None:
    bundle = copy_of("paths")
    manifest = _manifest(bundle)
    manifest["files"][path] = "0" * 64
    _write_manifest(bundle, manifest, rehash=False)
    _one_line_error(run_cli("inspect", bundle), "leaves the bundle folder")


def test_artifact_paths_come_from_the_checked_list(copy_of) -> None:
    bundle = copy_of("artifact")
    manifest = _manifest(bundle)
    manifest["components"][0]["artifact"] = "arrays/../../../../etc/passwd.npz"
    _write_manifest(bundle, manifest, rehash=False)
    with pytest.raises(BundleError, match="not one of the files listed"):
        Model.load(bundle)


@pytest.mark.parametrize("version", ["../../x", "/abs", "a/b", "..", "", 7])
def test_model_version_must_be_a_plain_name(copy_of, version: object) -> None:
    bundle = copy_of("version")
    manifest = _manifest(bundle)
    manifest["model_version"] = version
    _write_manifest(bundle, manifest, rehash=False)
    with pytest.raises(BundleError, match="not a plain name"):
        Model.load(bundle)


def test_symlinks_and_special_files_are_refused(copy_of, tmp_path: Path) -> None:
    bundle = copy_of("link")
    target = bundle / "features.json"
    outside = tmp_path / "outside.json"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(BundleError, match="features.json is a symbolic link"):
        Model.load(bundle)
    fifo = copy_of("fifo")
    (fifo / "features.json").unlink()
    os.mkfifo(fifo / "features.json")
    with pytest.raises(BundleError, match="features.json is not a regular file"):
        Model.load(fifo)  # never blocks reading a pipe


def test_oversized_files_are_refused_before_a_byte_is_read(run_cli, copy_of, tmp_path: Path) -> None:
    """Each file's size is checked before it is read or hashed: a hard link in a handed-over bundle to a large file
    elsewhere is not read whole only to be refused, nor a manifest padded to gigabytes parsed (sparse files: their
    size costs no disk)."""
    linked = copy_of("hard-link")
    elsewhere = tmp_path / "elsewhere.npz"
    with elsewhere.open("wb") as fh:
        fh.truncate(3 << 30)
    (linked / "arrays" / "explainer.npz").unlink()
    os.link(elsewhere, linked / "arrays" / "explainer.npz")
    _one_line_error(
        run_cli("inspect", linked), "arrays/explainer.npz holds 3,221,225,472 bytes, more than the 2,147,483,648"
    )
    padded = copy_of("padded")
    with (padded / "manifest.json").open("r+b") as fh:
        fh.truncate(65 << 20)  # the manifest, then NUL bytes: invalid JSON, refused for its size before parsing
    _one_line_error(run_cli("inspect", padded), "manifest.json (68,157,440 bytes, more than the 67,108,864")


def test_damaged_arrays_and_manifests_are_one_line_errors(run_cli, copy_of, files: Path) -> None:
    not_zip = copy_of("notzip")
    (not_zip / "arrays" / "explainer.npz").write_bytes(b"not a zip at all")
    _write_manifest(not_zip, _manifest(not_zip))
    _one_line_error(run_cli("inspect", not_zip), "arrays/explainer.npz is not a readable NumPy archive")
    missing = copy_of("missing")
    (missing / "arrays" / "explainer.npz").unlink()
    _one_line_error(run_cli("inspect", missing), "arrays/explainer.npz listed in manifest.json is missing")
    binary = copy_of("binary")
    (binary / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    _one_line_error(run_cli("inspect", binary), "manifest.json is not valid JSON")
    scalar = copy_of("scalar")
    (scalar / "manifest.json").write_text("[1, 2]")
    _one_line_error(run_cli("inspect", scalar), "does not hold a JSON object")
    a_file = scalar.parent / "file-bundle"
    a_file.write_text("{}")
    _one_line_error(run_cli("inspect", a_file), "not a segscope bundle")


def test_unreadable_bundle_is_a_one_line_error(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "arrays" / "explainer.npz").chmod(0)
    done = run_cli_unprivileged("inspect", copy, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "cannot read arrays/explainer.npz" in done.stderr
    (copy / "manifest.json").chmod(0)
    done = run_cli_unprivileged("inspect", copy, cwd=tmp_path)
    assert done.returncode == 2 and "cannot read manifest.json" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------------ registries
@pytest.fixture
def registry(bundle: Path, tmp_path: Path) -> Path:
    path = tmp_path / "reg"
    reg.ensure_registry(path, seed_bundle=bundle)
    return path


@pytest.mark.parametrize("pointer", [b"../../other\n", b"/tmp/elsewhere\n", b"\xff\xfe\x00\x01", b"versions/x\n"])
def test_current_cannot_point_outside_the_registry(
    run_cli, registry: Path, bundle: Path, tmp_path: Path, pointer: bytes
) -> None:
    shutil.copytree(bundle, tmp_path / "other")
    (registry / "CURRENT").write_bytes(pointer)
    _one_line_error(run_cli("inspect", registry), "CURRENT holds", "segscope promote")


def test_a_version_that_is_a_symlink_is_refused(registry: Path, bundle: Path, tmp_path: Path) -> None:
    shutil.copytree(bundle, tmp_path / "elsewhere")
    (registry / "versions" / "v2").symlink_to(tmp_path / "elsewhere")
    (registry / "CURRENT").write_text("v2\n")
    with pytest.raises(BundleError, match="which is missing"):
        Model.load(registry)


def test_plain_bundle_turned_registry_keeps_normal_permissions(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "plain"
    model.save(path)
    before = stat.S_IMODE(path.stat().st_mode)
    reg.ensure_registry(path)
    assert reg.is_registry(path)
    assert stat.S_IMODE(path.stat().st_mode) == before != 0o700


def test_a_plain_bundle_stays_whole_when_turning_it_into_a_registry_fails_midway(
    model: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `finetune` killed while it turned a plain bundle into a registry left versions/ and no CURRENT: a folder
    nothing loaded. CURRENT is now written before the bundle moves, so a failure there leaves the plain bundle."""
    path = tmp_path / "plain"
    model.save(path)

    def killed(*_: object) -> None:
        raise OSError("killed")

    monkeypatch.setattr(reg, "write_text_atomic", killed)
    with pytest.raises(OSError, match="killed"):
        reg.ensure_registry(path)
    monkeypatch.undo()
    assert not reg.is_registry(path) and Model.load(path).version == model.version
    assert not (path / "versions").exists() and [p.name for p in tmp_path.iterdir()] == ["plain"]
    reg.ensure_registry(path)
    assert reg.current_version(path) == model.version and Model.load(path).version == model.version


def _promote_many(registry: str, versions: list[str], rounds: int) -> None:
    for i in range(rounds):
        reg.set_current(registry, versions[i % len(versions)], action="promote", detail={"reason": "race"})


def test_concurrent_promotions_keep_the_log_true(registry: Path, model: Model) -> None:
    """Processes promoting at once: every log entry's ``previous`` is the entry before it."""
    first = reg.current_version(registry)
    others = []
    for i in range(3):
        version = f"{first[:15]}-race{i}"
        model_copy = Model.load(registry).with_version(version)
        model_copy.save(registry / "versions" / version)
        others.append(version)
    versions = [first, *others]
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_promote_many, args=(str(registry), versions[k:] + versions[:k], 60)) for k in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    entries = [e for e in reg.log(registry) if e["action"] == "promote"]
    assert len(entries) > 100
    chain = reg.log(registry)
    assert all(b["previous"] == a["version"] for a, b in itertools.pairwise(chain))
    assert reg.current_version(registry) == chain[-1]["version"]


def _finetune_at_the_barrier(registry: str, history: str, labels: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    from segscope.pipeline import finetune_file

    def step(text: str) -> None:
        if text.startswith("comparing"):  # both have loaded the same current version and trained
            barrier.wait(120)

    _, report, _ = finetune_file(registry, history, labels, on_step=step, folds=2)  # the race, not the gate, is tested
    results.put(report["promote"])


def test_concurrent_finetunes_promote_at_most_one(registry: Path, tmp_path: Path) -> None:
    history = make_transactions(12_000, seed=0)  # 120 frauds: enough for the gate to see a reliable gain
    history_path = tmp_path / "history.parquet"
    history.write_parquet(history_path)
    frauds = history.filter(pl.col("is_fraud") == 1)
    labels = tmp_path / "labels.csv"
    pl.DataFrame({"id": frauds["txn_id"], "label": ["anomaly"] * frauds.height}).write_csv(labels)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_finetune_at_the_barrier, args=(str(registry), str(history_path), str(labels), barrier, results)
        )
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(600)
        assert w.exitcode == 0
    promoted = sorted(results.get(timeout=5) for _ in range(2))
    assert promoted == [False, True]  # the second found the current version changed under it
    promotions = [e for e in reg.log(registry) if e["action"] == "promote"]
    assert len(promotions) == 1
    losing = next(
        json.loads((registry / "versions" / v / "manifest.json").read_text())["promotion"]
        for v in reg.list_versions(registry)
        if v != reg.current_version(registry) and v != promotions[0]["previous"]
    )
    assert "the current version changed" in losing["reason"] and losing["promote"] is False


def test_set_current_is_compare_and_swap(registry: Path, model: Model) -> None:
    first = reg.current_version(registry)
    second = f"{first[:15]}-cas"
    Model.load(registry).with_version(second).save(registry / "versions" / second)
    reg.set_current(registry, second, action="promote", expected=first)
    with pytest.raises(reg.PromotionConflictError, match="changed from"):
        reg.set_current(registry, first, action="promote", expected=first)
    assert reg.current_version(registry) == second


def test_rollback_goes_back_through_the_log(run_cli, registry: Path) -> None:
    first = reg.current_version(registry)
    second = f"{first[:15]}-next"
    Model.load(registry).with_version(second).save(registry / "versions" / second)
    assert run_cli("promote", registry, "--version", second).code == 0
    result = run_cli("rollback", registry)
    assert result.code == 0 and f"to {first}" in result.err
    assert reg.current_version(registry) == first
    _one_line_error(run_cli("promote", registry, "--version", "../../x"), "has no version")


def test_a_version_folder_renamed_away_from_its_bundle_is_refused(registry: Path) -> None:
    """A version folder renamed, CURRENT pointed at the new name: outputs carried the manifest's name instead."""
    first = reg.current_version(registry)
    renamed = f"{first[:15]}-renamed"
    (registry / "versions" / first).rename(registry / "versions" / renamed)
    (registry / "CURRENT").write_text(renamed + "\n")
    with pytest.raises(BundleError, match=f"version folder {renamed} holds the bundle of version {first}"):
        Model.load(registry)


def test_rollback_passes_over_a_log_entry_naming_a_missing_version(run_cli, registry: Path) -> None:
    first = reg.current_version(registry)
    second = f"{first[:15]}-next"
    Model.load(registry).with_version(second).save(registry / "versions" / second)
    assert run_cli("promote", registry, "--version", second).code == 0
    entry = {"action": "promote", "version": second, "previous": "20200101-000000-gone0000", "at": "2026-12-05"}
    with (registry / "promotions.jsonl").open("a") as fh:  # a later entry naming a version no longer held
        fh.write(json.dumps(entry) + "\n")
    result = run_cli("rollback", registry)
    assert result.code == 0 and reg.current_version(registry) == first, result.err


def test_only_the_trusted_path_unpickles() -> None:
    """The package has one ``pickle.loads``: the PyOD detector's, fed only by the bundle reader's trusted path."""
    calls = [
        (path.relative_to(ROOT).as_posix(), line.strip())
        for path in (ROOT / "src" / "segscope").rglob("*.py")
        for line in path.read_text().splitlines()
        if "pickle.load" in line or "allow_pickle=True" in line
    ]
    assert calls == [("src/segscope/unsupervised/detect.py", "self.model_ = pickle.loads(pickled)")]


# ------------------------------------------------------------------------- a red team's third round (values, links)
@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("leaf_value", np.nan, "'leaf_value' holds values that are not finite numbers"),
        ("leaf_value", -1.0, "negative path lengths"),
        ("denominator", 0.0, "'denominator' is 0.0, not above 0"),
        ("reference_scores", np.inf, "'reference_scores' holds values that are not finite numbers"),
    ],
)
def test_forest_values_that_would_score_nan_or_alert_on_everything_are_refused(
    run_cli, copy_of, files: Path, key: str, value: float, fragment: str
) -> None:
    """A NaN path length made every score NaN (0 alerts, exit 0); a denominator of 0 or below alerted on all."""
    bundle = copy_of(f"forest-{key}-{value}")
    forest = next(p.stem for p in (bundle / "arrays").glob("detector-*-iforest.npz"))

    def edit(arrays: dict[str, np.ndarray]) -> None:
        arrays[key] = np.full_like(arrays[key], value)

    from tests.fuzz_bundle import edit_npz

    edit_npz(bundle, forest, edit)
    _one_line_error(run_cli("score", files / "new.csv", "--bundle", bundle, "--out", bundle / "out.csv"), fragment)
    assert not (bundle / "out.csv").exists()


def test_a_compression_bomb_in_an_array_file_is_refused_before_unpacking(copy_of) -> None:
    """2 MB of deflated zeros declared and stored as a 200 MB array: within the size cap, but 100x its bytes."""
    import zipfile

    from tests.fuzz_bundle import rehash

    bundle = copy_of("bomb")
    path = bundle / "arrays" / "explainer.npz"
    with np.load(path) as data:
        d = data["sorted_ref"].shape[0]
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros((d, 25_000_000 // d)), allow_pickle=False)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("sorted_ref.npy", buffer.getvalue())
    assert path.stat().st_size < 1_000_000
    rehash(bundle)
    with pytest.raises(BundleError, match="a compression bomb"):
        Model.load(bundle)


def test_a_manifest_number_python_will_not_parse_is_one_line(run_cli, copy_of) -> None:
    bundle = copy_of("digits")
    text = (
        (bundle / "manifest.json")
        .read_text()
        .replace('"format_version": ', '"seed_x": ' + "9" * 5000 + ', "format_version": ')
    )
    (bundle / "manifest.json").write_text(text)
    _one_line_error(run_cli("inspect", bundle), "manifest.json is not valid JSON")


def test_current_as_a_symlink_is_refused_unread(run_cli, registry: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the secret line\n")
    (registry / "CURRENT").unlink()
    (registry / "CURRENT").symlink_to(secret)
    line = _one_line_error(run_cli("inspect", registry), "CURRENT is a symbolic link")
    assert "secret" not in line


def test_a_linked_promotion_log_is_never_written_through(run_cli, registry: Path, tmp_path: Path) -> None:
    """promotions.jsonl linked to a file elsewhere: promote appended a JSON line to that file."""
    first = reg.current_version(registry)
    second = f"{first[:15]}-next"
    Model.load(registry).with_version(second).save(registry / "versions" / second)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (registry / "promotions.jsonl").unlink()
    (registry / "promotions.jsonl").symlink_to(victim)
    _one_line_error(run_cli("promote", registry, "--version", second), "promotions.jsonl is a symbolic link")
    assert victim.read_text() == "precious\n"
    assert reg.current_version(registry) == first  # nothing changed: the log is checked before CURRENT moves
    _one_line_error(run_cli("rollback", registry), "promotions.jsonl is a symbolic link")


def test_log_lines_python_will_not_parse_are_passed_over(run_cli, registry: Path) -> None:
    first = reg.current_version(registry)
    second = f"{first[:15]}-next"
    Model.load(registry).with_version(second).save(registry / "versions" / second)
    assert run_cli("promote", registry, "--version", second).code == 0
    with (registry / "promotions.jsonl").open("a") as fh:
        fh.write("[" * 100_000 + "\n" + '{"n": ' + "9" * 5000 + "}\n")
    result = run_cli("rollback", registry)
    assert result.code == 0 and reg.current_version(registry) == first, result.err


@pytest.mark.parametrize(("field", "value"), [("training", None), ("label_snapshot", {"a": "b"}), ("versions", [])])
def test_inspect_of_descriptive_fields_scoring_never_reads_is_one_line(
    run_cli, copy_of, field: str, value: object
) -> None:
    """`training: null` or a label snapshot without its promotion loaded and scored, but `inspect` tracebacked."""
    bundle = copy_of(f"field-{field}")
    manifest = _manifest(bundle)
    manifest[field] = value
    _write_manifest(bundle, manifest)
    result = run_cli("inspect", bundle)
    _one_line_error(result, "manifest.json holds a field inspect cannot show")
    assert result.out == ""
