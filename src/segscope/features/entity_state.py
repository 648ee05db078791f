"""The state per-entity features carry between batches (:class:`EntityState`): per entity spec, the entities'
clocks and accumulators in arrays indexed by slot, and the (entity, value) counts in a compiled dict. It packs to
one Arrow frame per spec (whole, per input partition, or only what changed) for bundles and stream checkpoints."""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from segscope._arrow_file import read_arrow_file
from segscope.exceptions import BundleError
from segscope.features import _entity_kernel as kernel
from segscope.features.trailing import Trailing, check_columns, trailing_columns, trailing_from_row

__all__ = ["Block", "EntityState"]


@dataclass
class Block:
    """The state of one entity spec: slots of entities, their accumulators, the (entity, value) counts."""

    n_acc: int
    n_pairs: int
    keys: dict[str, int] = field(default_factory=dict)
    key_list: list[str] = field(default_factory=list)
    last_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_events: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    gen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    acc: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    #: the input partition that last touched each entity (-1: the fitting history)
    partition: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    dirty: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: when each entity last alerted (for ``policy.cooldown``; -inf: never)
    last_alert: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: when each entity last had a record that would alert, shown or held back (``policy.rearm``; -inf: never)
    last_raw: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: the trailing window of each entity's own scores (``policy.recalibrate``): per time bucket, the highest
    #: score that did not alert, the bucket's number and how many scores it holds
    peak: np.ndarray = field(default_factory=lambda: np.zeros((0, kernel.PEAK_BUCKETS)))
    peak_at: np.ndarray = field(default_factory=lambda: np.zeros((0, kernel.PEAK_BUCKETS), dtype=np.int64))
    peak_n: np.ndarray = field(default_factory=lambda: np.zeros((0, kernel.PEAK_BUCKETS), dtype=np.int64))
    #: each entity's trailing window of feature rows (``adapt:``), by key: only entities that have one
    trailing: dict[str, Trailing] = field(default_factory=dict)
    #: the last batch's rows: (entity slot, time as counted), for the cooldown; not kept
    rows: tuple[np.ndarray, np.ndarray] | None = None
    pairs: Any = None
    codes: list[dict[str, int]] = field(default_factory=list)
    values: list[list[str]] = field(default_factory=list)
    newest: float = -np.inf
    late: int = 0

    def __post_init__(self) -> None:
        if self.pairs is None:
            self.pairs = kernel.new_pairs()
        if not self.codes:
            self.codes = [{} for _ in range(self.n_pairs)]
            self.values = [[] for _ in range(self.n_pairs)]
        if self.acc.shape[1] != self.n_acc:
            self.acc = np.zeros((self.last_t.shape[0], self.n_acc))
        if self.last_alert.shape[0] != self.last_t.shape[0]:
            self.last_alert = np.full(self.last_t.shape[0], -np.inf)
        if self.last_raw.shape[0] != self.last_t.shape[0]:
            self.last_raw = np.full(self.last_t.shape[0], -np.inf)
        if self.peak.shape[0] != self.last_t.shape[0]:
            cap = (self.last_t.shape[0], kernel.PEAK_BUCKETS)
            self.peak, self.peak_at, self.peak_n = (
                np.zeros(cap),
                np.full(cap, kernel.NO_BUCKET),
                np.zeros(cap, np.int64),
            )

    @property
    def size(self) -> int:
        return len(self.key_list)

    def slots_for(self, keys: pl.Series) -> np.ndarray:
        """Each row's entity slot (new entities get new ones; null keys -1)."""
        unique = keys.drop_nulls().unique(maintain_order=True).to_list()
        slots = []
        for key in unique:
            slot = self.keys.get(key)
            if slot is None:
                slot = self.keys[key] = len(self.key_list)
                self.key_list.append(key)
            slots.append(slot)
        self._grow(len(self.key_list))
        if not unique:
            return np.full(keys.len(), -1, dtype=np.int64)
        mapped = keys.replace_strict(unique, slots, default=-1, return_dtype=pl.Int64)
        return mapped.fill_null(-1).to_numpy().astype(np.int64, copy=False)

    def codes_for(self, column: int, values: pl.Series) -> np.ndarray:
        table, listed = self.codes[column], self.values[column]
        unique = values.drop_nulls().unique(maintain_order=True).to_list()
        for value in unique:
            if value not in table:
                table[value] = len(listed)
                listed.append(value)
        return _mapped(values, unique, table)

    def codes_known(self, column: int, values: pl.Series) -> np.ndarray:
        """The codes of ``values`` in ``column`` (-1 for a value never coded), coding nothing new."""
        table = self.codes[column]
        return _mapped(values, [v for v in values.drop_nulls().unique().to_list() if v in table], table)

    def _grow(self, n: int) -> None:
        cap = self.last_t.shape[0]
        if n <= cap:
            return
        new = max(n, 2 * cap, 1024)

        def grown(a: np.ndarray, fill: Any = 0) -> np.ndarray:
            out = np.full((new, *a.shape[1:]), fill, dtype=a.dtype)
            out[:cap] = a
            return out

        self.last_t, self.n_events, self.gen = grown(self.last_t), grown(self.n_events), grown(self.gen)
        self.acc, self.partition, self.dirty = grown(self.acc), grown(self.partition, -1), grown(self.dirty, False)
        self.last_alert, self.last_raw = grown(self.last_alert, -np.inf), grown(self.last_raw, -np.inf)
        self.peak, self.peak_at, self.peak_n = (
            grown(self.peak),
            grown(self.peak_at, kernel.NO_BUCKET),
            grown(self.peak_n),
        )

    def copy(self) -> Block:
        arrays = (
            "last_t",
            "n_events",
            "gen",
            "acc",
            "partition",
            "dirty",
            "last_alert",
            "last_raw",
            "peak",
            "peak_at",
            "peak_n",
        )
        block = replace(
            self,
            keys=dict(self.keys),
            key_list=list(self.key_list),
            codes=[dict(c) for c in self.codes],
            values=[list(v) for v in self.values],
            rows=None,
            trailing={k: w.copy() for k, w in self.trailing.items()},
            **{name: getattr(self, name).copy() for name in arrays},
        )
        block.pairs = kernel.load_pairs(self.pairs_rows(), block.gen, max(self.n_pairs, 1))
        return block

    def pairs_rows(self) -> np.ndarray:
        if self.n_pairs == 0:
            return np.zeros((0, 4), dtype=np.int64)
        return kernel.dump_pairs(self.pairs, self.gen[: self.size], self.n_pairs)

    def evict(self, ttl: float, lateness: float) -> int:
        """Free the entities idle past ``ttl + allowed_lateness`` behind the newest event (they would start again
        anyway); only when they are a quarter of the state, so that the cost is amortised."""
        n = self.size
        if ttl <= 0 or n == 0:
            return 0
        idle = self.last_t[:n] < self.newest - ttl - lateness
        gone = int(idle.sum())
        if gone < max(1024, n // 4):
            return 0
        keep = np.flatnonzero(~idle)
        remap = np.full(n, -1, dtype=np.int64)
        remap[keep] = np.arange(keep.size)
        rows = self.pairs_rows()
        rows[:, 0] = remap[rows[:, 0]]
        self.key_list = [self.key_list[i] for i in keep]
        self.keys = {k: i for i, k in enumerate(self.key_list)}
        self.trailing = {k: w for k, w in self.trailing.items() if k in self.keys}
        self.last_t, self.n_events, self.gen = self.last_t[keep], self.n_events[keep], self.gen[keep]
        self.acc, self.partition, self.dirty = self.acc[keep], self.partition[keep], self.dirty[keep]
        self.last_alert, self.last_raw, self.rows = self.last_alert[keep], self.last_raw[keep], None
        self.peak, self.peak_at, self.peak_n = self.peak[keep], self.peak_at[keep], self.peak_n[keep]
        self.pairs = kernel.load_pairs(rows, self.gen, max(self.n_pairs, 1))
        return gone

    # ------------------------------------------------------------ to and from a frame
    def to_frame(self, rows: np.ndarray | None = None) -> pl.DataFrame:
        """Entities (all, or the slots ``rows``) as one frame: key, clocks, accumulators, and their seen values
        as lists, so that a snapshot is one self-describing file."""
        n = self.size
        rows = np.arange(n) if rows is None else rows
        frame = pl.DataFrame(
            {
                "key": [self.key_list[i] for i in rows],
                "last_t": self.last_t[rows],
                "n_events": self.n_events[rows],
                "gen": self.gen[rows],
                "partition": self.partition[rows],
                "last_alert": self.last_alert[rows],
                "last_raw": self.last_raw[rows],
                "acc": self.acc[rows] if self.n_acc else np.zeros((rows.size, 1)),
                "peak": self.peak[rows],
                "peak_at": self.peak_at[rows],
                "peak_n": self.peak_n[rows],
            },
            schema_overrides={"key": pl.String},
        ).with_row_index("slot")
        if self.trailing:
            frame = frame.with_columns(trailing_columns([self.trailing.get(self.key_list[i]) for i in rows]))
        pairs = self.pairs_rows()
        if pairs.shape[0]:
            lookup = np.full(n, -1, dtype=np.int64)
            lookup[rows] = np.arange(rows.size)
            pairs = pairs[lookup[pairs[:, 0]] >= 0]
            value = [self.values[c][code] for c, code in zip(pairs[:, 1], pairs[:, 2], strict=True)]
            listed = (
                pl.DataFrame(
                    {
                        "slot": lookup[pairs[:, 0]].astype(np.uint32),
                        "pair_column": pairs[:, 1].astype(np.int32),
                        "pair_value": value,
                        "pair_count": pairs[:, 3],
                    },
                    schema_overrides={"pair_value": pl.String},
                )
                .group_by("slot")
                .agg("pair_column", "pair_value", "pair_count")
            )
            frame = frame.join(listed, on="slot", how="left")
        else:
            frame = frame.with_columns(
                pl.lit(None, dtype=pl.List(pl.Int32)).alias("pair_column"),
                pl.lit(None, dtype=pl.List(pl.String)).alias("pair_value"),
                pl.lit(None, dtype=pl.List(pl.Int64)).alias("pair_count"),
            )
        return frame.drop("slot")

    def upsert(self, frame: pl.DataFrame) -> None:
        """Put the entities of ``frame`` (from :meth:`to_frame`) into this state, replacing those it holds."""
        if not frame.height:
            return
        keys = frame.get_column("key")
        slots = self.slots_for(keys)
        self.last_t[slots] = frame.get_column("last_t").to_numpy()
        self.n_events[slots] = frame.get_column("n_events").to_numpy()
        self.gen[slots] = frame.get_column("gen").to_numpy()
        self.partition[slots] = frame.get_column("partition").to_numpy()
        if "last_alert" in frame.columns:
            self.last_alert[slots] = frame.get_column("last_alert").to_numpy()
        if "last_raw" in frame.columns:
            self.last_raw[slots] = frame.get_column("last_raw").to_numpy()
        if "peak" in frame.columns:
            for name in ("peak", "peak_at", "peak_n"):
                values = np.asarray(frame.get_column(name).to_numpy()).reshape(-1, kernel.PEAK_BUCKETS)
                getattr(self, name)[slots] = values
        if "adapt_every" in frame.columns:
            names = [c for c in frame.columns if c.startswith("adapt_")]
            for key, row in zip(keys.to_list(), frame.select(names).iter_rows(named=True), strict=True):
                window = trailing_from_row(row)
                if window is None:
                    self.trailing.pop(key, None)
                else:
                    self.trailing[key] = window
        if self.n_acc:
            self.acc[slots] = np.asarray(frame.get_column("acc").to_numpy(), dtype=np.float64).reshape(-1, self.n_acc)
        if self.n_pairs == 0:
            return
        exploded = (
            frame.select(pl.Series("slot", slots), "pair_column", "pair_value", "pair_count")
            .explode("pair_column", "pair_value", "pair_count")
            .drop_nulls("pair_column")
        )
        rows = self.pairs_rows()
        rows = rows[~np.isin(rows[:, 0], slots)]
        fresh = [rows]
        for column in range(self.n_pairs):
            part = exploded.filter(pl.col("pair_column") == column)
            if part.height:
                codes = self.codes_for(column, part.get_column("pair_value"))
                fresh.append(
                    np.column_stack(
                        [
                            part.get_column("slot").to_numpy(),
                            np.full(part.height, column),
                            codes,
                            part.get_column("pair_count").to_numpy(),
                        ]
                    ).astype(np.int64)
                )
        self.pairs = kernel.load_pairs(np.vstack(fresh), self.gen, self.n_pairs)


#: numeric columns of an entity state file (besides ``key``, ``acc`` and the pair lists)
_STATE_NUMBERS = ("last_t", "n_events", "gen", "partition", "newest", "late")


def _mapped(values: pl.Series, unique: list[str], table: dict[str, int]) -> np.ndarray:
    """Each of ``values`` as its code in ``table`` (``unique``: the distinct ones it holds; -1 for the others)."""
    if not unique:
        return np.full(values.len(), -1, dtype=np.int64)
    mapped = values.replace_strict(unique, [table[v] for v in unique], default=-1, return_dtype=pl.Int64)
    return mapped.fill_null(-1).to_numpy().astype(np.int64, copy=False)


#: what an entity state file may unpack to: room for any real state (its columns compress a few times at most)
#: while a file of a megabyte that asks for gigabytes is refused before anything is allocated
_UNPACK_SLACK, _UNPACK_RATIO = 1 << 30, 32


def _read_state_file(data: bytes, block: Block) -> pl.DataFrame:
    import pyarrow as pa

    try:
        table = read_arrow_file(data, _UNPACK_SLACK + _UNPACK_RATIO * len(data))
        table.validate(full=True)
        frame = pl.from_arrow(table)
    except (pa.ArrowException, ValueError, OSError, TypeError) as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:120]
        raise BundleError(f"entity state: not a readable Arrow file ({type(exc).__name__}: {reason})") from None
    assert isinstance(frame, pl.DataFrame)
    missing = [c for c in ("key", "acc", *_STATE_NUMBERS) if c not in frame.columns]
    if missing:
        raise BundleError(f"entity state: the column(s) {missing} are missing")
    wrong = [
        c
        for c in (*_STATE_NUMBERS, "last_alert", "last_raw")
        if c in frame.columns and not frame.schema[c].is_numeric()
    ]
    if wrong or frame.schema["key"] != pl.String or frame.get_column("key").null_count():
        raise BundleError(f"entity state: the column(s) {wrong or ['key']} do not hold what the state writes")
    for name, dtype in (("peak", pl.Float64), ("peak_at", pl.Int64), ("peak_n", pl.Int64)):
        if name in frame.columns and frame.schema[name] != pl.Array(dtype, kernel.PEAK_BUCKETS):
            raise BundleError(
                f"entity state: '{name}' holds {frame.schema[name]}, expected {kernel.PEAK_BUCKETS} per entity"
            )
    check_columns(frame.schema)
    acc = frame.schema["acc"]
    if block.n_acc and acc != pl.Array(pl.Float64, block.n_acc):
        raise BundleError(f"entity state: 'acc' holds {acc}, expected {block.n_acc} numbers per entity")
    _check_values(frame, block)
    return frame


def _check_values(frame: pl.DataFrame, block: Block) -> None:
    """Values the state never writes, refused: they would score on silently (an alert time of +inf silences an
    entity for good, a generation past the pair table's bits or a pair column out of range drops what it learnt)."""
    bad = []
    for name, low, high in (("last_t", -1e300, 1e300), ("n_events", 0, 2**62), ("gen", 0, 2**23 - 1)):
        column = frame.get_column(name).cast(pl.Float64)
        if column.is_nan().any() or (column < low).any() or (column > high).any():
            bad.append(name)
    for name in ("last_alert", "last_raw", "newest"):
        if name in frame.columns and (frame.get_column(name).cast(pl.Float64).fill_nan(np.inf) == np.inf).any():
            bad.append(name)
    if block.n_pairs:
        lists = {"pair_column": pl.List(pl.Int32), "pair_value": pl.List(pl.String), "pair_count": pl.List(pl.Int64)}
        if any(frame.schema.get(c) != t for c, t in lists.items()):
            raise BundleError(f"entity state: the pair columns {sorted(lists)} are missing or not what it writes")
        lengths = frame.select(pl.col(c).list.len().fill_null(0) for c in lists)
        same = lengths.select(
            (pl.col("pair_column") == pl.col("pair_value")) & (pl.col("pair_value") == pl.col("pair_count"))
        ).to_series()
        if not same.all():
            raise BundleError("entity state: the pair columns hold lists of different lengths")
        pairs = frame.select(pl.col("pair_column").explode(), pl.col("pair_count").explode()).drop_nulls()
        if (pairs["pair_column"] < 0).any() or (pairs["pair_column"] >= block.n_pairs).any():
            bad.append("pair_column")
        if (pairs["pair_count"] < 1).any():
            bad.append("pair_count")
    if bad:
        raise BundleError(f"entity state: the column(s) {bad} hold values the state never writes")


@dataclass
class EntityState:
    """What per-entity features carry from one batch to the next: one block per entity spec, the input
    partition of the batch being scored (for stream checkpoints), and the late records counted."""

    blocks: list[Block]
    partitions: np.ndarray | None = None

    def copy(self) -> EntityState:
        return EntityState([b.copy() for b in self.blocks])

    @property
    def entities(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def late(self) -> int:
        return sum(b.late for b in self.blocks)

    def nbytes(self) -> int:
        """Memory held, approximately: arrays, key strings and the (entity, value) table."""
        total = 0
        for b in self.blocks:
            total += b.last_t.nbytes + b.n_events.nbytes + b.gen.nbytes + b.acc.nbytes + b.partition.nbytes
            total += b.last_alert.nbytes + b.last_raw.nbytes + b.peak.nbytes + b.peak_at.nbytes + b.peak_n.nbytes
            total += sum(len(k) + 49 + 8 + 72 for k in b.key_list)  # str object + list slot + dict entry
            total += len(b.pairs) * 40 + sum(len(v) + 49 + 80 for vs in b.values for v in vs)
            total += sum(w.nbytes + 200 for w in b.trailing.values())
        return total

    def to_bytes(self, block: int, *, partition: int | None = None, dirty_only: bool = False) -> bytes:
        b = self.blocks[block]
        mask = np.ones(b.size, dtype=bool)
        if partition is not None:
            mask &= b.partition[: b.size] == partition
        if dirty_only:
            mask &= b.dirty[: b.size]
        buffer = io.BytesIO()
        frame = b.to_frame(np.flatnonzero(mask))
        frame = frame.with_columns(pl.lit(b.newest).alias("newest"), pl.lit(b.late).alias("late"))
        frame.write_ipc(buffer, compression="lz4")
        return buffer.getvalue()

    def load_bytes(self, block: int, data: bytes) -> None:
        """Merge a file :meth:`to_bytes` wrote into ``block``. The bytes are read and fully validated by Arrow
        before Polars sees them (Polars' IPC reader panics on some damaged files), and the columns checked, so a
        damaged or foreign file is a :class:`BundleError`, never a crash."""
        frame = _read_state_file(data, self.blocks[block])
        b = self.blocks[block]
        if frame.height:
            b.newest = max(b.newest, float(frame.get_column("newest")[0]))
        b.upsert(frame.drop("newest", "late"))

    def clean(self) -> None:
        for b in self.blocks:
            b.dirty[:] = False

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget the entities last touched from these partitions (they moved to another process)."""
        for b in self.blocks:
            keep = ~np.isin(b.partition[: b.size], list(partitions))
            if not keep.all():
                fresh = Block(b.n_acc, b.n_pairs, newest=b.newest, late=b.late)
                fresh.upsert(b.to_frame(np.flatnonzero(keep)))
                b.__dict__.update(fresh.__dict__)
