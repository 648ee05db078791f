"""The entity state a file's run leaves for the next file (``segscope score FILE --state-dir DIR``, ``watch``):
what each entity has learnt (levels, holds, a ladder's climb, the hour of day's levels, adapt windows) and when it
last alarmed, so that files scored one after another decide as one file scored in order would.

``DIR`` holds numbered sets (``000001/``, ``000002/``, ...), each the whole state after one file: one Arrow file
per entity block and ``state.json`` (whose entity config, which model version, after which file). A set is
written under a temporary name and renamed into place once complete, so a run that stops half-way leaves the
previous set as it was; the newest two are kept. A set is read only when its ``state.json`` names this bundle's
entity state meaning: its entity config and level grids (a model version promoted since, fine-tuned from it, carries
on; a refit starts a new folder). The alert budget's counts are not carried: a budget counts per file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path

from segscope._io import STAMP_BYTES, STATE_FILE_BYTES, read_regular
from segscope.exceptions import BundleError, CheckpointError, ConfigError, SegscopeWarning
from segscope.features.entity_meaning import earlier_set_stamp
from segscope.features.entity_state import EntityState
from segscope.model import Model

__all__ = ["load_carried", "lock_state_dir", "save_carried", "state_sets"]

FORMAT = 1
STAMP = "state.json"
#: sets kept after a save: the newest and the one before it
_KEPT = 2
#: the lock a run holds on its folder from reading the state to writing the next
LOCK = ".lock"


def state_sets(root: Path) -> list[Path]:
    """The numbered sets in ``root``, oldest first (links and other names are never read)."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _numbered(p)), key=lambda p: int(p.name))


def _numbered(path: Path) -> bool:
    return path.name.isascii() and path.name.isdigit() and len(path.name) <= 18


def _check_root(root: Path, model: Model) -> None:
    if not model.has_entities:
        raise ConfigError(
            "--state-dir carries entity state from file to file, and this bundle has no entities: in its config; "
            "drop --state-dir"
        )
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"--state-dir {root} is not a folder; give a folder (it is created if missing)")


def lock_state_dir(root: Path, model: Model) -> int:
    """Hold ``root`` for one run, from reading its state to writing the next (created if missing): the open lock
    file, to close when the run ends. A folder another run holds is a one-line error (two runs at once would each
    continue the same state, and one's would be lost)."""
    _check_root(root, model)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise CheckpointError(f"cannot use --state-dir {root} ({exc.strerror or exc}); give a folder this process "
                              "can write")  from None  # fmt: skip
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CheckpointError(
            f"--state-dir {root} is in use by another run; wait for it to end (files of one folder are scored one "
            "after another), or give another folder"
        ) from None
    return fd


def load_carried(root: Path, model: Model) -> EntityState | None:
    """The state the newest complete set in ``root`` holds, for ``model`` (None: no set yet, start from the end of
    the bundle's history). A set of another entity config, or a damaged one, is a one-line error."""
    _check_root(root, model)
    sets = state_sets(root)
    if not sets:
        return None
    newest = sets[-1]  # never skipped: segscope writes no set without its stamp, so one without is not its own
    if newest.is_symlink() or not newest.is_dir():
        raise CheckpointError(f"{newest} is not a folder segscope wrote; remove it to use the set before")
    try:
        stamp = json.loads(read_regular(newest / STAMP, STAMP_BYTES))
    except (OSError, ValueError, RecursionError):
        stamp = None
    blocks = stamp.get("blocks") if isinstance(stamp, dict) else None
    if not isinstance(stamp, dict) or stamp.get("format") != FORMAT or type(blocks) is not int or not 0 < blocks < 100:
        raise CheckpointError(f"{newest / STAMP} is damaged or not segscope's; remove {newest} to use the set before")
    meaning = model.entity_meaning  # the bundle's entity config and level grids: a changed one starts a new folder
    assert meaning is not None  # it has entities (checked above)
    stamped, written_by = stamp.get("entities"), stamp.get("version")
    earlier = (
        None if stamped == meaning else earlier_set_stamp(model.config.entities, stamped, written_by, model.version)
    )
    if earlier:
        warnings.warn(f"--state-dir {root} set {newest.name}: {earlier}", SegscopeWarning, stacklevel=2)
    if stamped != meaning and earlier is None:
        raise CheckpointError(
            f"--state-dir {root} holds the state of another entity config or fit (after "
            f"{str(stamp.get('after'))[:80]!r}, model {str(stamp.get('version'))[:40]}); give a new folder to start "
            "from this bundle's history"
        )
    state = model.new_state(from_start=True).entities
    assert state is not None  # the bundle has entities (checked above)
    if blocks != len(state.blocks):
        raise CheckpointError(f"{newest / STAMP} lists {blocks} entity blocks, the bundle has {len(state.blocks)}; "
                              "give a new folder")  # fmt: skip
    for i in range(len(state.blocks)):
        path = newest / f"entities-{i}.arrow"
        try:
            state.load_bytes(i, read_regular(path, STATE_FILE_BYTES))
        except (OSError, BundleError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:160]
            raise CheckpointError(f"{path} cannot be read ({why}); remove {newest} to use the set before") from None
    return state


def save_carried(root: Path, model: Model, state: EntityState, after: str, rows: int) -> Path:
    """Write ``state`` as the newest set in ``root`` (after the file ``after``), whole or not at all; older sets
    beyond the newest two are removed. Returns the set's folder."""
    _check_root(root, model)
    try:
        root.mkdir(parents=True, exist_ok=True)
        sets = state_sets(root)
        number = int(sets[-1].name) + 1 if sets else 1  # past any numbered name, even one planted there
        if number >= 10**18:
            raise CheckpointError(f"--state-dir {root} holds a set numbered {sets[-1].name}; remove it")
        tmp = Path(tempfile.mkdtemp(prefix=".set-", suffix=".tmp", dir=root))
        for i in range(len(state.blocks)):
            (tmp / f"entities-{i}.arrow").write_bytes(state.to_bytes(i))
        stamp = {
            "format": FORMAT,
            "entities": model.entity_meaning,
            "blocks": len(state.blocks),
            "version": model.version,
            "after": after,
            "rows": rows,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (tmp / STAMP).write_text(json.dumps(stamp))
        for path in tmp.iterdir():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
        target = root / f"{number:06d}"
        tmp.rename(target)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write the state to --state-dir {root} ({exc.strerror or exc}); give a folder this process "
            "can write (the scored output is complete; the next file would start from the state before it)"
        ) from None
    for old in [*state_sets(root)[:-_KEPT], *(p for p in root.glob(".set-*.tmp") if p != tmp)]:
        shutil.rmtree(old, ignore_errors=True)
    return target
