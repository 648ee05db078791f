"""Entity state checkpoints of a stream, kept with the consumer offsets they belong to.

Every batch writes, for each input partition it touched, the entities it changed (a delta file named by the
partition's next offset), before the offsets are committed; every ``full_every`` deltas a partition's whole state
is written instead. A process that takes over a partition (after a restart, a SIGKILL or a rebalance) starts at the
group's committed offset ``o`` and rebuilds the partition's entities from the newest full file at or before ``o`` and
the deltas after it up to ``o``: exactly the state the records before ``o`` left. Files past ``o`` belong to
batches whose offsets were never committed; they are deleted, and those records come again. Partitions must be
keyed by entity (the producer's key) so that an entity's records stay in one partition, in order.

Layout: ``<dir>/<topic>-<partition>/<offset:020>-<block>.<delta|full>.arrow``; every file written to a temporary
name and renamed, so a killed process never leaves half a file.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from segscope._io import write_bytes_atomic
from segscope._kafka import TP
from segscope.features.entity_state import EntityState
from segscope.sources.base import Batch

__all__ = ["EntityCheckpoints"]

log = logging.getLogger("segscope.stream")
_NAME = re.compile(r"^(\d{20})-(\d+)\.(delta|full)\.arrow$")


class EntityCheckpoints:
    """Write and restore one stream's entity state per input partition under ``root``."""

    def __init__(self, root: Path, topic: str, *, full_every: int = 50) -> None:
        self.root, self.topic, self.full_every = root, topic, full_every
        self.restored: set[int] = set()
        self.deltas: dict[int, int] = {}

    def _dir(self, partition: int) -> Path:
        return self.root / f"{self.topic}-{partition}"

    def _files(self, partition: int) -> list[tuple[int, int, str, Path]]:
        found = []
        folder = self._dir(partition)
        if folder.is_dir():
            for path in folder.iterdir():
                match = _NAME.match(path.name)
                if match is not None:
                    found.append((int(match.group(1)), int(match.group(2)), match.group(3), path))
        return sorted(found, key=lambda f: (f[0], f[2] == "delta", f[1]))

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
        for start, _, _, path in files:
            if start > offset:  # from batches whose offsets were never committed: they come again
                path.unlink(missing_ok=True)
        files = [f for f in files if f[0] <= offset]
        fulls = [f[0] for f in files if f[2] == "full"]
        base = max(fulls) if fulls else -1
        applied = 0
        for start, block, kind, path in files:
            if start > base or (start == base and kind == "full"):
                state.load_bytes(block, path.read_bytes())
                applied += 1
        if offset > 0 and not files:
            log.warning(
                "partition %d starts at offset %d but has no entity checkpoint in %s: its entities continue from "
                "the bundle's end-of-history state",
                partition,
                offset,
                self.root,
            )
        self.deltas[partition] = sum(1 for f in files if f[0] > base)
        log.info("partition %d: entity state restored at offset %d (%d files)", partition, offset, applied)

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
            folder.mkdir(parents=True, exist_ok=True)
            for block in range(len(state.blocks)):
                data = state.to_bytes(block, partition=p, dirty_only=not full)
                write_bytes_atomic(folder / f"{offset:020d}-{block}.{'full' if full else 'delta'}.arrow", data)
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

    def forget(self, partitions: list[int], state: EntityState) -> None:
        """Partitions taken away by a rebalance: their entities leave this process."""
        self.restored -= set(partitions)
        state.drop_partitions(set(partitions))

