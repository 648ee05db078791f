"""Entity state checkpoints of a stream, kept with the consumer offsets they belong to.

Every batch writes, for each input partition it touched, the entities it changed (a delta file named by the
partition's next offset), before the offsets are committed; every ``full_every`` deltas a partition's whole state
is written instead. A process that takes over a partition (after a restart, a SIGKILL or a rebalance) starts at the
group's committed offset ``o`` and rebuilds the partition's entities from the newest full file at or before ``o`` and
the deltas after it up to ``o``, on top of the bundle's end-of-history state: exactly the state the records before
``o`` left. Files past ``o`` belong to batches whose offsets were never committed; they are deleted, and those
records come again. Partitions must be keyed by entity (the producer's key) so that an entity's records stay in one
partition, in order.

Layout: ``<dir>/<topic>-<partition>/<offset:020>-<block>.<delta|full>.arrow`` and ``stamp.json``; every file
written to a temporary name and renamed, so a killed process never leaves half a file.

**The stamp.** A restore is right only when the files were written by the same stream: the same input topic and
partition (the offsets name positions in it), the same consumer group (the offsets it committed decide which files
are valid, and a restore deletes the files past them: another group's files would be read at the wrong offsets and
then destroyed), and the same entity state meaning (the entity config and the level grids fitted with it:
:mod:`segscope.features.entity_meaning`; the same layout with another window, or level codes of another grid, would
be read without an error and give other scores). ``stamp.json`` in each partition folder records them with the
format version, before the folder's first data file, and every restore checks it first, before anything is
deleted. The model version is recorded but not compared: the files hold only the entities the stream changed, the
others come from the bundle, and a promoted version with the same meaning (a fine-tuned one) continues the stream's
entities by design (the model watcher keeps them on a hot swap), so a restart after a promotion must restore them
too.

**What is refused, and why.** A checkpoint of another topic, partition, group or entity config, or of a newer
format, is refused (:class:`CheckpointError`: the folder, what differs and the fix): restoring it would score with
the wrong state without a word. A damaged file (cut short, not Arrow, a block the config does not have, missing
columns, an accumulator of another width, a full state missing a block) or a damaged stamp is refused as well,
naming the file: the partition's state at ``o`` cannot be rebuilt, and rebuilding it from the bundle's
end-of-history state behind the operator's back would lose everything the stream learned since the fit (every
card's merchants and countries "first seen" again: a burst of false alerts, velocities reset) while looking healthy.
The stream stops with one line; deleting (or moving aside) the partition's folder is the documented rebuild, a
decision its cost calls for. Files are written whole (temporary file, fsync, rename), so damage means a failed disk,
a lost fsync or a hand edit, not a crash.

**Earlier checkpoints** (no ``stamp.json``, written before stamps existed) are adopted: they are checked against
the entity config's layout (blocks, columns, accumulator widths), restored, and stamped as this stream's, with one
warning naming the folder; refusing them would cost every running stream its state on upgrade. Stamps written
before the meaning covered the whole config and the grids are adopted the same way, with one warning, when they
name this config the way they were computed then (key, time, ttl, lateness, each feature's name, kind, input, window
and share: the rest of the settings and a refit's grids cannot be checked from them).

**A hot swap to another entity config** (a promoted version whose ``entities:`` or level grids differ: the
watcher restarts the entities from the new version's end-of-history state) restarts the checkpoints of this
process's partitions too (:meth:`EntityCheckpoints.rebase`: their files deleted, the folders stamped with the new
config); a partition
stamped with the config this process left, taken over in a rebalance from a process that had not swapped yet,
restarts the same way instead of being refused.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from segscope._io import STAMP_BYTES, STATE_FILE_BYTES, read_regular, write_bytes_atomic
from segscope._kafka import TP
from segscope.config import EntityConfig
from segscope.exceptions import CheckpointError, SegscopeError
from segscope.features.entity_meaning import earlier_checkpoint_stamp
from segscope.features.entity_state import EntityState
from segscope.sources.base import Batch

if TYPE_CHECKING:
    from segscope.model import Model

__all__ = ["FORMAT", "CheckpointError", "EntityCheckpoints", "Stamp", "newest_state"]

log = logging.getLogger("segscope.stream")
_NAME = re.compile(r"^(\d{20})-(\d+)\.(delta|full)\.arrow$")
#: The checkpoint format this code writes and reads (the Arrow files' columns, the layout, the stamp).
FORMAT = 1
STAMP = "stamp.json"
_COLUMNS = {"key", "last_t", "n_events", "gen", "partition", "acc", "pair_column", "pair_value", "pair_count", "newest"}
_REBUILD = (
    "to start the partition's entities again from the bundle's end-of-history state (what the stream learned "
    "since the fit is lost)"
)


@dataclass(frozen=True)
class Stamp:
    """Whose checkpoints these are: the input topic, the consumer group, the entity config's hash, and the model
    version that started them (recorded, not compared)."""

    topic: str
    group: str
    entities: str
    version: str = ""
    #: the bundle's ``entities:``, to tell whether an earlier release's stamp is theirs (none: adopt none)
    specs: tuple[EntityConfig, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def of(cls, model: Model, topic: str, group: str) -> Stamp:
        meaning = model.entity_meaning
        assert meaning is not None  # checkpoints are made for bundles with entities only
        return cls(topic, group, meaning, model.version, model.config.entities)

    def adopts(self, stamp: dict[str, Any]) -> str | None:
        """Whether a stamp an earlier release wrote is this one's (:func:`earlier_checkpoint_stamp`)."""
        if not self.specs:
            return None
        return earlier_checkpoint_stamp(self.specs, stamp.get("entities"), stamp.get("version"), self.version)

    def record(self, partition: int) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "topic": self.topic,
            "group": self.group,
            "partition": partition,
            "entities": self.entities,
            "version": self.version,
        }


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {text[:160]}"


class EntityCheckpoints:
    """Write and restore one stream's entity state per input partition under ``root`` (created if missing)."""

    def __init__(self, root: Path, stamp: Stamp, *, full_every: int = 50) -> None:
        self.root, self.stamp, self.full_every = root, stamp, full_every
        self.topic = stamp.topic
        self.restored: set[int] = set()
        self.deltas: dict[int, int] = {}
        #: entity configs this process swapped away from (their partitions restart instead of being refused)
        self.superseded: set[str] = set()
        self._unstamped: set[int] = set()  # partitions being restored from an earlier release's files
        if root.exists() and not root.is_dir():
            raise CheckpointError(
                f"--state-dir {root} is a file, not a folder; give a folder for the entity checkpoints (it is "
                "created if missing)"
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create the state folder {root} ({_reason(exc)}); give a folder this process can write"
            ) from None

    def _dir(self, partition: int) -> Path:
        return self.root / f"{self.topic}-{partition}"

    def _files(self, partition: int) -> list[tuple[int, int, str, Path]]:
        found = []
        folder = self._dir(partition)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise CheckpointError(
                f"entity checkpoint folder {folder} is not a folder (a file or a symbolic link); delete it {_REBUILD}"
            )
        if folder.is_dir():
            try:
                paths = list(folder.iterdir())
            except OSError as exc:
                raise CheckpointError(
                    f"cannot read the entity checkpoint folder {folder} ({_reason(exc)}); check its permissions"
                ) from None
            for path in paths:
                match = _NAME.match(path.name)
                if match is not None:
                    found.append((int(match.group(1)), int(match.group(2)), match.group(3), path))
        return sorted(found, key=lambda f: (f[0], f[2] == "delta", f[1]))

    # ------------------------------------------------------------------------------------------ the stamp
    def _write_stamp(self, partition: int) -> None:
        folder = self._dir(partition)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(folder / STAMP, json.dumps(self.stamp.record(partition), sort_keys=True).encode())
        except OSError as exc:
            raise CheckpointError(
                f"cannot write {folder / STAMP} ({_reason(exc)}); give a --state-dir this process can write"
            ) from None

    def _claim(self, partition: int, files: list[tuple[int, int, str, Path]]) -> str:
        """Check the partition folder's stamp before anything in it is touched: "ours", "fresh" (no stamp, no
        files), "earlier" (files of an earlier release, no stamp), "adopted" (stamped by an earlier release for this
        config) or "left" (the config this process left)."""
        folder = self._dir(partition)
        file = folder / STAMP
        if not file.exists():
            return "earlier" if files else "fresh"
        fix = f"delete {folder} {_REBUILD}"
        try:
            stamp = json.loads(read_regular(file, STAMP_BYTES).decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested past what json reads
            raise CheckpointError(f"entity checkpoint stamp {file} is damaged ({_reason(exc)}); {fix}") from None
        if not isinstance(stamp, dict) or type(stamp.get("format")) is not int or stamp["format"] < 1:
            raise CheckpointError(f"entity checkpoint stamp {file} is damaged (no format version); {fix}")
        if stamp["format"] > FORMAT:
            raise CheckpointError(
                f"entity checkpoint stamp {file} has format {stamp['format']}, newer than this segscope's ({FORMAT}); "
                f"upgrade segscope (pip install -U segscope), or {fix}"
            )
        if not isinstance(stamp.get("entities"), str):
            raise CheckpointError(f"entity checkpoint stamp {file} is damaged (no entity state meaning); {fix}")
        ours = self.stamp.record(partition)
        differ = [k for k in ("topic", "group", "partition") if stamp.get(k) != ours[k]]
        if not differ and stamp.get("entities") != ours["entities"] and stamp.get("entities") in self.superseded:
            return "left"
        adopted = None if differ or stamp.get("entities") == ours["entities"] else self.stamp.adopts(stamp)
        if adopted is not None:
            if adopted:
                log.warning("entity checkpoint %s: %s", folder, adopted)
            return "adopted"
        if differ or stamp.get("entities") != ours["entities"]:
            names = {"topic": "topic", "group": "consumer group", "partition": "partition"}
            theirs = [f"{names[k]} {stamp.get(k)!r}" for k in differ]
            mine = [f"{names[k]} {ours[k]!r}" for k in differ]
            if stamp.get("entities") != ours["entities"]:
                theirs.append(f"the entity config and fit of model version {str(stamp.get('version'))[:64]!r}")
                mine.append(f"the entity config and fit of this bundle (model version {self.stamp.version!r})")
            raise CheckpointError(
                f"entity checkpoint {folder} was written for {', '.join(theirs)}, not for this stream "
                f"({', '.join(mine)}); give each stream (topic, group, entity config) its own --state-dir, or {fix}"
            )
        return "ours"

    def _reset(self, partition: int) -> None:
        """Start the partition's checkpoints again under this stamp (after a swap to another entity config)."""
        for _, _, _, path in self._files(partition):
            path.unlink(missing_ok=True)
        self._write_stamp(partition)
        self.deltas[partition] = 0
        log.info("partition %d: entity checkpoints restarted for version %s", partition, self.stamp.version)

    def rebase(self, stamp: Stamp) -> None:
        """The stream's entity state restarted from another model's end-of-history state (a hot swap to another
        entity config): the partitions this process holds start their checkpoints again under ``stamp``."""
        if stamp.entities != self.stamp.entities:
            self.superseded.add(self.stamp.entities)
        self.superseded.discard(stamp.entities)
        self.stamp = stamp
        for partition in sorted(self.restored):
            self._reset(partition)

    # ------------------------------------------------------------------------------------------ restore
    def prepare(self, batch: Batch, state: EntityState) -> None:
        """Tag each row with its partition, and restore the partitions this process has not restored yet from
        the offset the batch starts at (the group's committed one)."""
        n = batch.frame.height
        where = [batch.origin(i) for i in range(n)] if batch.origin is not None else []
        state.partitions = np.array([w[1] for w in where] if where else [-1] * n, dtype=np.int32)
        starts: dict[int, int] = {}
        for _, p, offset, _ in where:
            starts[p] = min(starts.get(p, offset), offset)
        for dead in batch.dead:
            starts[dead.partition] = min(starts.get(dead.partition, dead.offset), dead.offset)
        for p, offset in starts.items():
            if p not in self.restored and p >= 0:
                self._restore(p, offset, state)
                self.restored.add(p)

    def _restore(self, partition: int, offset: int, state: EntityState) -> None:
        files = self._files(partition)
        claim = self._claim(partition, files)
        if claim == "left":
            self._reset(partition)
            return
        self._unstamped.discard(partition)
        if claim == "earlier":
            self._unstamped.add(partition)
        past = [path for start, _, _, path in files if start > offset]
        files = [f for f in files if f[0] <= offset]
        fulls = [f[0] for f in files if f[2] == "full"]
        base = max(fulls) if fulls else -1
        chosen = [f for f in files if f[0] > base or (f[0] == base and f[2] == "full")]
        loaded = [(block, path, self._read(partition, offset, block, path, state)) for _, block, _, path in chosen]
        self._check_complete(partition, offset, chosen, len(state.blocks))
        for block, path, data in loaded:
            try:
                state.load_bytes(block, data)
            except Exception as exc:  # whatever reading it raises, the file cannot be restored
                raise self._damaged(partition, offset, path, _reason(exc)) from None
        if claim == "earlier":
            log.warning(
                "entity checkpoint %s has no stamp (written before segscope stamped them): restored as this "
                "stream's (topic %r, group %r, the entity config of model version %s) and stamped now; if another "
                "group or entity config wrote it, stop the stream and delete the folder",
                self._dir(partition), self.topic, self.stamp.group, self.stamp.version,
            )  # fmt: skip
        if claim != "ours":
            self._write_stamp(partition)
        for path in past:  # from batches whose offsets were never committed: they come again
            path.unlink(missing_ok=True)
        if offset > 0 and not files:
            log.warning(
                "partition %d starts at offset %d but has no entity checkpoint in %s: its entities continue from "
                "the bundle's end-of-history state",
                partition,
                offset,
                self.root,
            )
        self.deltas[partition] = sum(1 for f in files if f[0] > base)
        log.info("partition %d: entity state restored at offset %d (%d files)", partition, offset, len(chosen))

    def _damaged(self, partition: int, offset: int, path: Path, why: str) -> CheckpointError:
        folder = self._dir(partition)
        what = "is damaged or of another entity config (unstamped)" if partition in self._unstamped else "is damaged"
        return CheckpointError(
            f"entity checkpoint {path} {what} ({why}): partition {partition}'s entity state at offset {offset} "
            f"cannot be rebuilt; restore the file, or delete {folder} {_REBUILD}"
        )

    def _read(self, partition: int, offset: int, block: int, path: Path, state: EntityState) -> bytes:
        """The file's bytes, once its schema fits the entity block it names (read before anything is applied)."""
        if block >= len(state.blocks):
            why = f"it names entity block {block}; the entity config has {len(state.blocks)}"
            raise self._damaged(partition, offset, path, why)
        try:
            data = read_regular(path, STATE_FILE_BYTES)
            schema = pl.read_ipc_schema(io.BytesIO(data))
        except Exception as exc:  # OSError, or Polars's errors on a file cut short or not Arrow
            raise self._damaged(partition, offset, path, _reason(exc)) from None
        missing = sorted(_COLUMNS - set(schema))
        if missing:
            raise self._damaged(partition, offset, path, f"no column {', '.join(missing)}")
        width = getattr(schema["acc"], "shape", None)
        n_acc = max(state.blocks[block].n_acc, 1)
        if width != (n_acc,):
            why = f"{width[0] if width else 'no'} accumulators per entity; the entity config has {n_acc}"
            raise self._damaged(partition, offset, path, why)
        return data

    def _check_complete(self, partition: int, offset: int, chosen: list[tuple[int, int, str, Path]], n: int) -> None:
        """Every offset restored has one file per entity block (a batch writes them all before its commit)."""
        written: dict[tuple[int, str], set[int]] = {}
        for start, block, kind, _ in chosen:
            written.setdefault((start, kind), set()).add(block)
        for (start, kind), blocks in written.items():
            if blocks != set(range(n)):
                lost = min(set(range(n)) - blocks)
                path = self._dir(partition) / f"{start:020d}-{lost}.{kind}.arrow"
                raise self._damaged(partition, offset, path, "missing: the other blocks of its offset are there")

    # ------------------------------------------------------------------------------------------ write
    def save(self, state: EntityState, positions: dict[TP, int]) -> None:
        """After a batch: the changed entities of each partition it touched, named by its next offset."""
        if state.partitions is None:
            return
        touched = {int(p) for p in np.unique(state.partitions)} & {p for (_, p) in positions}
        for (_, p), offset in positions.items():
            if p not in touched:
                continue
            full = self.deltas.get(p, 0) + 1 >= self.full_every
            folder = self._dir(p)
            for block in range(len(state.blocks)):
                data = state.to_bytes(block, partition=p, dirty_only=not full)
                path = folder / f"{offset:020d}-{block}.{'full' if full else 'delta'}.arrow"
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    write_bytes_atomic(path, data)
                except OSError as exc:
                    raise CheckpointError(
                        f"cannot write the entity checkpoint {path} ({_reason(exc)}); free space or fix the "
                        f"permissions of {self.root}, then restart: the stream resumes at its last commit"
                    ) from None
            self.deltas[p] = 0 if full else self.deltas.get(p, 0) + 1
        state.clean()

    def prune(self, positions: dict[TP, int]) -> None:
        """Once offsets are committed: drop the files older than the newest full state at or before them."""
        for (_, p), offset in positions.items():
            files = [f for f in self._files(p) if f[0] <= offset]
            fulls = [f[0] for f in files if f[2] == "full"]
            if fulls:
                for start, _, _, path in files:
                    if start < max(fulls):
                        path.unlink(missing_ok=True)


def newest_state(root: Path, model: Model) -> EntityState:
    """The entities a stream's checkpoints in ``root`` hold at their newest files, on ``model``'s end-of-history
    state: per partition folder, the newest full file and the deltas after it (what a restart at the newest offsets
    would resume; read only, no offset asked of the cluster). For people (``segscope inspect --state-dir``)."""
    state = model.new_state().entities
    if state is None:
        raise CheckpointError("the bundle has no entities: a stream of it keeps no entity checkpoints")
    if not root.is_dir():
        raise CheckpointError(f"--state-dir {root} is not a folder; give the folder segscope stream checkpoints in")
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        files = sorted(
            (int(m.group(1)), m.group(3) == "delta", int(m.group(2)), path)
            for path in folder.iterdir()
            if (m := _NAME.match(path.name)) is not None
        )
        base = max((f[0] for f in files if not f[1]), default=-1)
        for start, delta, block, path in files:
            if (start > base or (start == base and not delta)) and block < len(state.blocks):
                try:
                    state.load_bytes(block, read_regular(path, STATE_FILE_BYTES))
                except (SegscopeError, OSError) as exc:
                    raise CheckpointError(f"entity checkpoint {path} cannot be read ({_reason(exc)})") from None
    return state
