"""What a bundle's entity state means, as one digest: the entity config (every setting given) and the level grids
fitted on the history. State written under one digest is read under it only: ``--state-dir`` sets and stream
checkpoints are stamped with it, and a promoted version continues the stream's entities only when its digest is the
same. A fine-tuned version shares its parent's entity features, so it carries on; a refit on other history has
other level grids, so the level codes its state holds would name other ranges, and it starts again.

A setting at its default is left out, so a setting a later release adds (at its default) keeps the digest. For a
bundle without ``new_level`` features the digest is what ``--state-dir`` sets have been stamped with from the start;
:func:`earlier_set_stamp` and :func:`earlier_checkpoint_stamp` tell whether what an earlier release stamped is
this bundle's, to adopt its state once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from segscope._durations import duration_seconds
from segscope.config import EntityConfig
from segscope.features import levels

if TYPE_CHECKING:
    from segscope.features.entity import EntityFeatures

__all__ = ["earlier_checkpoint_stamp", "earlier_set_stamp", "entity_meaning"]


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _settings(specs: Sequence[EntityConfig]) -> list[dict[str, object]]:
    return [spec.model_dump(mode="json", exclude_defaults=True) for spec in specs]


def entity_meaning(features: EntityFeatures) -> str:
    """The digest of a fitted bundle's entity features: its ``entities:`` and the level grids fitted for them."""
    if not features.grids_:
        return _settings_digest(features.specs)
    return _digest({"entities": _settings(features.specs), "grids": json.loads(levels.dump(features.grids_))})


def _settings_digest(specs: Sequence[EntityConfig]) -> str:
    """What ``--state-dir`` sets were stamped with before the level grids counted: every setting given."""
    return _digest(_settings(specs))


def _checkpoint_digest(specs: Sequence[EntityConfig]) -> str:
    """What stream checkpoints were stamped with before: the key, time, ttl, lateness and each feature's name,
    kind, input, window and share (durations in seconds); not ``levels``, ``ladder``, ``min_hold`` and the rest."""
    from segscope.features.entity import feature_name  # the entity features import this module

    def seconds(value: str | int | None) -> float | None:
        return None if value is None else duration_seconds(value)

    described = [
        {
            "key": s.key,
            "time": s.time,
            "ttl": seconds(s.ttl),
            "allowed_lateness": seconds(s.allowed_lateness),
            "features": [
                {"name": feature_name(s, f), "kind": f.kind, "of": f.of, "window": seconds(f.window), "share": f.share}
                for f in s.features
            ],
        }
        for s in specs
    ]
    return _digest(described)


def earlier_checkpoint_stamp(
    specs: Sequence[EntityConfig], stamped: object, written_by: object, version: str
) -> str | None:
    """The warning under which a stream checkpoint an earlier release stamped ``stamped`` (written by model
    ``written_by``) is adopted as this bundle's (``version``, its ``entities:`` ``specs``); None when it is not
    theirs. That stamp held part of the settings and no grids, so whoever wrote it, it is adopted with a warning."""
    if not isinstance(stamped, str) or stamped != _checkpoint_digest(specs):
        return None
    return (
        f"stamped by model version {str(written_by)[:64]!r} before stamps covered every entity setting and the "
        f"level grids: adopted as version {version!r}'s; if its entities: settings changed or the bundle was "
        "refitted since, delete the folder"
    )


def earlier_set_stamp(specs: Sequence[EntityConfig], stamped: object, written_by: object, version: str) -> str | None:
    """Whether a ``--state-dir`` set an earlier release stamped ``stamped`` (written by model ``written_by``) is
    this bundle's (``version``, its ``entities:`` ``specs``): None when it is not; "" when it surely is; else the
    warning to adopt it under. That stamp held every setting, so only the level grids are unknown, and a set the
    same version wrote has them (a version names its fit's time and data)."""
    if not isinstance(stamped, str) or stamped != _settings_digest(specs):
        return None
    if written_by == version:
        return ""
    return (
        f"written by model version {str(written_by)[:64]!r} before stamps covered the level grids: adopted as version "
        f"{version!r}'s; if that version was refitted rather than fine-tuned, its levels differ: give a new folder"
    )
