"""Batch scoring on Apache Spark: the same `Model.score` code on every executor, through ``mapInArrow``.

Spark hands each Python worker Arrow batches of a partition; each batch becomes a Polars frame, is scored by the
model exactly as ``segscope score`` scores a file batch, and goes back as Arrow with the same columns and types.
Scores do not depend on the batch, so they equal local scores row for row. The bundle is shipped as a zip with
``SparkContext.addArchive`` (checksums are verified where it lands) and loaded once per Python worker process.

Text inputs (CSV) are read by Spark as text and typed on the executor the way :class:`FileSource` types them
(the bundle's numeric types, dates parsed where the fit saw date-times), so a value that does not fit gets the
same one-line error as local scoring. A Spark failure whose cause is one of segscope's errors is raised as that
error on the driver. Alert budgets count across a whole file, and per-entity features need each entity's
records in order through one state, which partitions scored apart cannot do: such bundles are refused here.

Spark's own output (the driver JVM's warnings, log4j lines, Java stack traces; in local mode the executors' and
Python workers' too) goes to a log file in a private temporary folder, not the terminal: a failure reads as one line.
The file is removed at exit unless a message names it. ``SEGSCOPE_SPARK_LOG_LEVEL`` set to a log4j level (``WARN``,
``INFO``, ``ERROR``...) prints Spark's log on the terminal at that level instead.

``pip install 'segscope[spark]'`` (pyspark; Java 17 or later).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from segscope import registry
from segscope._deps import require
from segscope._io import detect_format
from segscope.exceptions import BundleError, ConfigError, DataError, SchemaError, SegscopeError, SourceError
from segscope.model import Model
from segscope.sources.files import type_text_columns

__all__ = [
    "LOG_LEVEL_VARIABLE",
    "fit_path",
    "fit_sample",
    "input_format",
    "read",
    "score",
    "score_path",
    "session",
    "text_types",
    "write_parquet",
]

#: Bundles loaded in this Python worker: (shipped folder, trusted) -> Model. Spark reuses workers across tasks.
_LOADED: dict[tuple[str, bool], Model] = {}
_LOCK = threading.Lock()
#: Names a log4j level to print Spark's log on the terminal at (see the module's docstring).
LOG_LEVEL_VARIABLE = "SEGSCOPE_SPARK_LOG_LEVEL"
_LOGS: dict[str, Path] = {}  # "folder": this process's private folder for Spark's log; "kept": a log named


def session(master: str | None = None, *, app_name: str = "segscope", partitions: int | None = None) -> Any:
    """A SparkSession on ``master`` (default: ``local[*]``, or what spark-submit set), with UTC session time
    (timestamps reach the model as the naive UTC values it was fitted on) and this Python for the workers
    unless ``PYSPARK_PYTHON`` says otherwise. Spark's own output goes to a log file (see the module's docstring)."""
    require("pyspark", extra="spark", feature="the Spark engine")
    import warnings

    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    level = os.environ.get(LOG_LEVEL_VARIABLE, "").strip().upper() or None
    if level not in (None, "OFF", "FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE", "ALL"):
        raise ConfigError(f"{LOG_LEVEL_VARIABLE} must be a log4j level (OFF, ERROR, WARN, INFO, DEBUG); got {level}")
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")  # we use Arrow, not pandas
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    folder = _log_folder(level or "ERROR", pattern="spark: %p %c{1}: %m%n" if level else "%d{HH:mm:ss} %p %c: %m%n")
    opts = os.environ.get("SPARK_SUBMIT_OPTS", "")  # the driver JVM's options, read when it starts
    if "log4j2.configurationFile" not in opts:
        os.environ["SPARK_SUBMIT_OPTS"] = f"{opts} -Dlog4j2.configurationFile={folder / 'log4j2.properties'}".strip()
    conf = SparkConf().setAppName(app_name).set("spark.sql.session.timeZone", "UTC")
    conf.set("spark.ui.showConsoleProgress", "false")
    # Arrow batches of 100k rows (Spark's default is 10k): the per-batch cost of scoring is paid 10x less often
    conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
    if master is not None:
        conf.setMaster(master)
    if partitions is not None:
        conf.set("spark.sql.shuffle.partitions", str(partitions))
    log = folder / "spark.log"
    seen = log.stat().st_size if log.exists() else 0
    try:
        if level is None and SparkContext._gateway is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
            from pyspark.java_gateway import launch_gateway

            with log.open("ab") as out:  # the driver JVM's stdout and stderr
                gateway = launch_gateway(conf, popen_kwargs={"stdout": out, "stderr": out})  # type: ignore[no-untyped-call]
            SparkContext(conf=conf, gateway=gateway)
        spark = SparkSession.builder.config(conf=conf).getOrCreate()
    except Exception as exc:  # no Java, a bad master URL...: the JVM's own words, when it said any
        output = log.read_bytes()[seen : seen + 65536].decode(errors="replace") if log.exists() else ""
        said = re.search(r"[\w.$]+(?:Exception|Error): (.+)", output)
        reason = said.group(1).strip() if said else f"{_first_line(exc)}; Java 17 or later?"
        raise SegscopeError(f"Spark did not start ({reason[:300]}); {_logs()}") from None
    spark.sparkContext.setLogLevel(level or "ERROR")
    return spark


def _log_folder(level: str, pattern: str) -> Path:
    """This process's private folder (mode 0700, removed at exit unless a message named the log in it): the log4j2
    configuration the driver JVM starts with (its console at ``level``) and, when not the terminal, its output."""
    if "folder" not in _LOGS:
        folder = _LOGS["folder"] = Path(tempfile.mkdtemp(prefix="segscope-spark-"))
        atexit.register(_remove_logs, folder)
        (folder / "log4j2.properties").write_text(
            f"rootLogger.level = {level}\nrootLogger.appenderRef.stderr.ref = console\n"
            "appender.console.type = Console\nappender.console.name = console\nappender.console.target = SYSTEM_ERR\n"
            f"appender.console.layout.type = PatternLayout\nappender.console.layout.pattern = {pattern}\n"
        )
    return _LOGS["folder"]


def _remove_logs(folder: Path) -> None:
    if "kept" not in _LOGS:
        shutil.rmtree(folder, ignore_errors=True)


def _logs() -> str:
    """Where Spark's own log of this run is (then kept), for a message about a failure that is not segscope's."""
    log = _LOGS["folder"] / "spark.log" if "folder" in _LOGS else None
    if log is not None and log.exists():
        _LOGS["kept"] = log
        return f"Spark's log: {log}"
    return "Spark's log is above" if os.environ.get(LOG_LEVEL_VARIABLE) else f"{LOG_LEVEL_VARIABLE}=WARN shows its log"


def read(spark: Any, path: str | Path, model: Model | None = None, *, partitions: int | None = None) -> Any:
    """A Spark DataFrame of a Parquet or CSV file or folder (any path Spark reads). CSV columns are read as text
    (typed later, on the executors, as the bundle knows them). ``partitions`` repartitions the input."""
    text = str(path)
    fmt = input_format(text)
    try:
        if fmt == "parquet":
            df = spark.read.parquet(text)
        else:
            df = spark.read.option("header", True).option("inferSchema", False).option("mode", "FAILFAST").csv(text)
    except Exception as exc:  # pyspark's AnalysisException: path missing, not readable
        raise SourceError(f"{text}: cannot read it with Spark ({_first_line(exc)}); check the path") from None
    if not df.columns:
        raise SourceError(f"{text}: no columns; pass a file or folder with a header and at least one row")
    if model is not None:
        missing = [c.name for c in model.input_schema().columns if c.name not in df.columns]
        if missing:
            raise SchemaError(f"{text}: column(s) {missing[:10]} missing; the bundle was fitted with them")
    return df.repartition(partitions) if partitions else df


def input_format(path: str) -> str:
    """parquet or csv, from the path (a folder: from its data files, which must all be one or the other)."""
    if _remote(path):  # s3a://, hdfs://, abfss://...: Spark lists it, not this machine
        return "csv" if path.rstrip("/").endswith((".csv", ".csv.gz")) else "parquet"
    p = Path(path)
    if not p.is_dir():
        fmt = detect_format(path)
        if fmt not in ("parquet", "csv"):
            raise SourceError(f"{path}: the Spark engine reads Parquet or CSV; convert the {fmt} input to Parquet")
        return fmt
    names = [f.name for f in p.rglob("*") if f.is_file() and not f.name.startswith((".", "_"))]
    for fmt in ("parquet", "csv"):
        if names and all(n.endswith((f".{fmt}", f".{fmt}.gz")) for n in names):
            return fmt
    raise SourceError(f"{path}: the folder must hold only .parquet or only .csv files; got {sorted(names)[:5]}")


def text_types(df: Any) -> dict[str, pl.DataType]:
    """The types segscope's own CSV reader gives the text columns of ``df`` (inferred on its first rows, dates not
    guessed), so that columns the model does not use come out as ``segscope score`` writes them."""
    from segscope.sources.files import CSV_INFER_ROWS, scan_file

    head = pl.from_arrow(df.limit(CSV_INFER_ROWS).toArrow())
    assert isinstance(head, pl.DataFrame)
    with tempfile.TemporaryDirectory(prefix="segscope-spark-") as tmp:
        path = Path(tmp) / "head.csv"
        head.write_csv(path)
        schema = scan_file(path).collect_schema()
    return {name: dtype for name, dtype in schema.items() if dtype != pl.String and head.schema[name] == pl.String}


def score(df: Any, bundle: str | Path, *, trusted: bool = False, types: dict[str, pl.DataType] | None = None) -> Any:
    """``df`` scored by the bundle (a bundle folder or a registry's current version): the input columns plus
    the scored columns, with the types ``segscope score`` writes. Text columns are typed as the bundle knows
    them, and others as ``types`` says (see :func:`text_types`). Lazy, like any Spark transformation."""
    path = registry.resolve(bundle)
    return _score(df, path, Model.load(path, trusted=trusted), trusted=trusted, types=types)


def _score(df: Any, path: Path, model: Model, *, trusted: bool, types: dict[str, pl.DataType] | None) -> Any:
    """:func:`score` with the bundle folder ``path`` already loaded as ``model`` (the one the workers load)."""
    if model.describe_policy().get("kind") == "budget":
        raise ConfigError(
            "this bundle's alert policy is a budget, which counts alerts across a whole file; partitions scored "
            "apart cannot share it: refit with a contamination, quantile or fixed policy to score on Spark"
        )
    if model.has_entities:
        raise ConfigError(
            "this bundle computes per-entity features, which need each entity's records in order through one "
            "state; Spark partitions score apart: use segscope score (one process) or segscope stream"
        )
    from_arrow_schema = _arrow_types().from_arrow_schema

    input_schema = _polars_schema(df.schema)
    text = {name for name, dtype in input_schema.items() if dtype == pl.String}
    dtypes = {k: v for k, v in {**(types or {}), **model.input_dtypes()}.items() if k in text}
    out_arrow = _plain_arrow(pl.DataFrame(schema=model.scored_schema(_typed_schema(model, input_schema, dtypes))))
    shipped = _ship(df.sparkSession, path)
    dates = tuple(c for c in model.date_columns() if c in text)

    def score_batches(batches: Iterator[Any]) -> Iterator[Any]:
        scorer = _worker_model(shipped, trusted)
        for batch in batches:
            arrived = pl.from_arrow(batch)
            assert isinstance(arrived, pl.DataFrame)
            scored = scorer.score(_from_spark(arrived, dtypes, dates))
            yield from scored.to_arrow().cast(out_arrow).to_batches()

    import warnings

    with warnings.catch_warnings():  # mapInArrow runs pyspark's pandas check too
        warnings.simplefilter("ignore", FutureWarning)
        return df.mapInArrow(score_batches, from_arrow_schema(out_arrow))


def _typed_schema(model: Model, schema: pl.Schema, known: dict[str, pl.DataType]) -> pl.Schema:
    """The input schema after typing text columns (the output schema follows from it)."""
    dates = set(model.date_columns())
    typed = {n: pl.Datetime("us") if n in dates else known.get(n, t) for n, t in schema.items() if t == pl.String}
    return pl.Schema({**dict(schema.items()), **typed})  # text columns typed, in their places


def _from_spark(frame: pl.DataFrame, dtypes: dict[str, pl.DataType], dates: tuple[str, ...]) -> pl.DataFrame:
    """A Spark Arrow batch as local scoring would read it: UTC timestamps naive, text typed as the bundle knows."""
    aware = [n for n, t in frame.schema.items() if isinstance(t, pl.Datetime) and t.time_zone is not None]
    if aware:
        frame = frame.with_columns(pl.col(n).dt.convert_time_zone("UTC").dt.replace_time_zone(None) for n in aware)
    return type_text_columns(frame, dtypes, dates) if dtypes or dates else frame


def _worker_model(shipped: str, trusted: bool) -> Model:
    import numba
    from pyspark import SparkFiles, TaskContext

    # Spark runs one task per core: each worker's compiled kernels keep to the cores its task was given
    context = TaskContext.get()
    cpus = int(context.cpus()) if context is not None else 1
    numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, cpus)))  # type: ignore[attr-defined]
    with _LOCK:
        key = (shipped, trusted)
        if key not in _LOADED:
            _LOADED[key] = Model.load(SparkFiles.get(shipped), trusted=trusted)
        return _LOADED[key]


def _ship(spark: Any, bundle: Path) -> str:
    """Zip the bundle under a unique name and register it with ``addArchive`` (every executor fetches and unpacks
    it once; folders cannot be shipped beyond local mode). Returns the name workers find it under."""
    digest = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()[:12]
    name = f"segscope-bundle-{digest}-{uuid.uuid4().hex[:8]}"
    staging = Path(tempfile.mkdtemp(prefix="segscope-spark-"))
    archive = shutil.make_archive(str(staging / name), "zip", root_dir=bundle)
    atexit.register(shutil.rmtree, staging, True)  # Spark serves it from here while the session lasts
    spark.sparkContext.addArchive(archive)
    return f"{name}.zip"


def _arrow_types() -> Any:
    """pyspark's Arrow type conversions; importing them checks pandas and warns about pandas 3, which segscope
    does not use here (Arrow in, Arrow out)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from pyspark.sql.pandas import types

    return types


def _polars_schema(spark_schema: Any) -> pl.Schema:
    arrow = _arrow_types().to_arrow_schema(spark_schema)
    return pl.DataFrame(arrow.empty_table()).schema


def _plain_arrow(frame: pl.DataFrame) -> Any:
    """The frame's Arrow schema with the types Spark's Arrow reader takes (no large or view strings/lists)."""
    import pyarrow as pa

    def plain(t: Any) -> Any:
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return pa.string()
        if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            return pa.binary()
        if pa.types.is_large_list(t) or pa.types.is_list(t) or pa.types.is_list_view(t):
            return pa.list_(pa.field(t.value_field.name, plain(t.value_type), t.value_field.nullable))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, plain(f.type), f.nullable) for f in t])
        return t

    schema = frame.to_arrow().schema
    return pa.schema([pa.field(f.name, plain(f.type), True) for f in schema])


def write_parquet(df: Any, out: str | Path, *, on_progress: Callable[[str], None] | None = None) -> int:
    """Write ``df`` as a Parquet folder at ``out``, all or nothing: into a hidden sibling first, renamed into place
    when Spark's job committed (on object stores, which have no rename, Spark's own commit protocol makes the
    folder appear). Returns the number of rows written."""
    _write(df, out, on_progress)
    return int(df.sparkSession.read.parquet(str(out)).count())


def _write(df: Any, out: str | Path, on_progress: Callable[[str], None] | None) -> None:
    remote = _remote(str(out))
    target = str(out)
    if not remote:
        out = Path(out)
        if out.exists():
            raise SourceError(
                f"--out {out} exists; the Spark engine writes a new Parquet folder: remove it or pick one"
            )
        if not out.parent.is_dir():
            raise SourceError(f"--out {out}: folder {out.parent} does not exist; create it first")
        target = str(out.parent / f".{out.name}.segscope-{uuid.uuid4().hex[:8]}")
    watcher = _ProgressWatcher(df.sparkSession.sparkContext, on_progress) if on_progress else None
    try:
        df.write.mode("errorifexists").parquet(target)
    except Exception as exc:
        if not remote:
            shutil.rmtree(target, ignore_errors=True)
        raise _as_segscope_error(exc) from None
    finally:
        if watcher is not None:
            watcher.stop()
    if not remote:
        os.replace(target, out)


def _as_segscope_error(exc: BaseException) -> BaseException:
    """One of segscope's errors raised on an executor, as that error (its one line); else the exception."""
    text = str(exc)
    kinds = {k.__name__: k for k in (DataError, SchemaError, SourceError, BundleError, ConfigError)}
    found = re.search(r"segscope\.exceptions\.(\w+): (.+)", text)
    if found and found.group(1) in kinds:
        return kinds[found.group(1)](found.group(2).strip())
    if isinstance(exc, SegscopeError):
        return exc
    said = _first_line(exc)
    if "MALFORMED_CSV_RECORD" in said:  # FAILFAST: Spark reads a CSV record per line, and its fields as the header's
        return SourceError(f"{said}: too few or too many fields, or a quoted field holding a newline; fix that row")
    return SegscopeError(f"the Spark job failed: {said}; {_logs()}")


def _first_line(exc: BaseException) -> str:
    """The line that says what went wrong: a Java exception's root cause (the last 'Caused by:') when there is one,
    else the first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    java = [m[1] for line in lines if (m := re.match(r"^(?:: |Caused by: )?[\w.$]+(?:Exception|Error): (.+)", line))]
    return (java[-1:] or lines or [type(exc).__name__])[0].split(" SQLSTATE: ")[0][:300]


class _ProgressWatcher:
    """A line per Spark stage of the jobs started while it runs (the write's, not the reads before it) once the
    stage completes (tasks done), from the status tracker, polled every half second and once more at the end."""

    def __init__(self, context: Any, report: Callable[[str], None]) -> None:
        self.context, self.report = context, report
        self.reported: set[int] = set()
        self.earlier = set(context.statusTracker().getJobIdsForGroup())  # jobs before this one: not reported
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="segscope-spark-progress", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        tracker = self.context.statusTracker()
        stages: set[int] = set()
        for job in set(tracker.getJobIdsForGroup()) - self.earlier:
            info = tracker.getJobInfo(job)
            stages.update(info.stageIds if info is not None else ())
        for stage in sorted(stages - self.reported):
            stage_info = tracker.getStageInfo(stage)
            done = stage_info is not None and 0 < stage_info.numTasks <= stage_info.numCompletedTasks
            if done and stage_info.numActiveTasks == 0:
                self.reported.add(stage)
                name = stage_info.name.split(" at ")[0]
                self.report(f"  stage {stage} ({name}): {stage_info.numTasks} tasks done")

    def _run(self) -> None:
        while not self.done.wait(0.5):
            self._poll()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self._poll()


def fit_sample(df: Any, max_rows: int, seed: int, *, csv: bool) -> tuple[pl.DataFrame, int]:
    """(a sample of at most ``max_rows`` rows drawn on the cluster with ``seed``, as a Polars frame typed as
    local reading types it; the total row count). CSV text is typed by writing the sample out and reading it
    back with segscope's own reader (the same inference and date parsing as a local fit)."""
    from segscope.sources.files import read_file

    total = int(df.count())
    if total == 0:
        raise DataError("the input has a header but no rows; fit needs at least one row")
    sample = df if total <= max_rows else df.sample(fraction=min(1.0, 1.2 * max_rows / total), seed=seed)
    frame = pl.from_arrow(sample.limit(max_rows).toArrow())
    assert isinstance(frame, pl.DataFrame)
    if not csv:
        return _from_spark(frame, {}, ()), total
    with tempfile.TemporaryDirectory(prefix="segscope-spark-") as tmp:
        text = Path(tmp) / "sample.csv"
        frame.write_csv(text)
        return read_file(text), total


# ------------------------------------------------------------------ the CLI's jobs
def score_path(
    bundle: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    master: str | None = None,
    partitions: int | None = None,
    trusted: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``segscope score --engine spark``: score a Parquet or CSV file or folder into a Parquet folder at ``out``.
    Returns rows, alerts and seconds."""
    import time

    start = time.perf_counter()
    path = registry.resolve(bundle)
    model = Model.load(path, trusted=trusted)
    spark = session(master, partitions=partitions)
    try:
        df = read(spark, data, model)
        if df.isEmpty():  # as local scoring refuses it (a cheap job: it stops at the first row)
            has = "the folder's files have" if Path(str(data)).is_dir() else "the file has"
            raise DataError(f"{data}: {has} a header but no rows; there is nothing to score")
        df = df.repartition(partitions) if partitions else df
        types = text_types(df) if input_format(str(data)) == "csv" else None
        _write(_score(df, path, model, trusted=trusted, types=types), out, on_progress)
        counted = spark.read.parquet(str(out)).selectExpr("count(*)", "count_if(is_alert)").first()
    except Exception as exc:
        raise _as_segscope_error(exc) from None
    rows, alerts = int(counted[0]), int(counted[1])
    return {"rows": rows, "alerts": alerts, "seconds": time.perf_counter() - start, "version": model.version}


def fit_path(
    data: str | Path, config: Any, *, master: str | None = None, on_step: Callable[[str], None] | None = None
) -> Model:
    """``segscope fit --engine spark``: sample at most ``max_fit_rows`` rows on the cluster (with the config's
    seed), fit locally; the sample size, the seed and the input's row count are in the bundle's manifest."""
    if config.entities:
        raise ConfigError(
            "per-entity features are computed over the whole history in order, not over a sample: fit this config "
            "with segscope fit (one process reads the history batch by batch)"
        )
    step = on_step or (lambda _: None)
    step("sampling the history on Spark")
    spark = session(master)
    text = str(data)
    try:
        sample, total = fit_sample(read(spark, text), config.max_fit_rows, config.seed, csv=input_format(text) == "csv")
    except Exception as exc:
        raise _as_segscope_error(exc) from None
    fingerprint = hashlib.sha256(text.encode()).hexdigest() if _remote(text) else _fingerprint(Path(text))
    return Model(config).fit(sample, fingerprint=fingerprint, total_rows=total, on_step=on_step, sampled_on="spark")


def _remote(path: str) -> bool:
    scheme = path.split("://", 1)[0] if "://" in path else ""
    return bool(scheme) and scheme != "file"


def _fingerprint(path: Path) -> str:
    """A file's sha256, or for a folder the sha256 of its files' names, sizes and modification times."""
    from segscope._io import sha256_file

    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(f for f in path.rglob("*") if f.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
