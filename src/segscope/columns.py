"""A config's column names against a file's own: the column mapping and the sensors rule.

``columns:`` in a config (``--map NAME=COLUMN`` on the command line, repeatable) says that the column the config
calls NAME is COLUMN in the data: every place the config names NAME (``features.id_column`` and ``drop``, an
entity's ``key`` and ``time``, an ``of`` column or the columns of its expression, ``policy.time_column``) reads
COLUMN instead, and the bundle is fitted on the data's own names. ``NAME=`` (nothing after ``=``) says the data has
no such column: it leaves ``drop`` and the id and time columns, and an entity keyed on it is one entity for the
whole file (one machine, one card); a feature that reads it is an error.

``sensors:`` on an entity block repeats each of its features whose ``of`` reads the column ``sensor`` once per
sensor column of the data: ``numeric`` (every numeric column except the entity's key and time, the id column and
the ``drop`` columns), or a list of names and patterns (``[temp_*, pressure]``, ``fnmatch`` patterns, case
sensitive); ``sensor`` in ``features.drop`` drops every sensor column (their raw levels are not features). A
feature with a ``name`` writes ``{sensor}`` in it. A ``state`` feature reads the sensors together: ``of: sensor``
becomes one feature ``over`` all of them (none when the data has fewer than two; ``learn`` lowered to keep at
most 100,000 numbers per entity when they are many). Both work on the config as
plain data, before it is validated.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Sequence
from typing import Any

from segscope.exceptions import ConfigError
from segscope.expressions import expression_columns, rename_columns

__all__ = ["SENSOR", "expand_sensors", "map_columns", "parse_mapping", "reads"]

#: The column name that stands for each sensor in a block with ``sensors:``.
SENSOR = "sensor"
#: A ``state`` feature keeps at most this many numbers per entity while it learns (learn x sensors), and learns
#: from 1,000 readings by default: over ``sensors:`` of many columns, from as many as fit (at least 10).
STATE_NUMBERS, STATE_LEARN = 100_000, 1000


def parse_mapping(items: Sequence[str]) -> dict[str, str]:
    """``["merchant=merchant_id", "label="]`` -> ``{"merchant": "merchant_id", "label": ""}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, column = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(
                f"--map {item!r}: write NAME=COLUMN (the config's column name, then the data's), e.g. "
                "--map merchant=merchant_id, or NAME= for a column the data does not have"
            )
        out[name.strip()] = column.strip()
    return out


def reads(of: str) -> list[str]:
    """The columns an ``of`` reads: itself when it is a column name, else its expression's columns."""
    try:
        return expression_columns(of)
    except ConfigError:
        return [of]  # a column name that is no expression ("Torque [Nm]")


def _plain(value: Any) -> Any:
    """A config section as plain data (a section can arrive as a validated model)."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def _renamed_of(of: str, mapping: dict[str, str]) -> str:
    if of in mapping:
        if not mapping[of]:
            raise ValueError(f"an entity feature reads '{of}', which the column mapping says the data lacks")
        return mapping[of]
    read = reads(of)
    gone = [c for c in read if c in mapping and not mapping[c]]
    if gone:
        raise ValueError(f"an entity feature reads {gone}, which the column mapping says the data lacks")
    return rename_columns(of, mapping) if any(c in mapping for c in read) and read != [of] else of


def _renamed_over(feature: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    over = feature.get("over")
    if not over:
        return feature
    gone = [c for c in over if c in mapping and not mapping[c]]
    if gone:
        raise ValueError(f"an entity feature reads {gone}, which the column mapping says the data lacks")
    return {**feature, "over": [mapping.get(c, c) for c in over]}


def _named(data: dict[str, Any]) -> set[str]:
    """Every column the config names."""
    features = _plain(data.get("features")) or {}
    named = {*features.get("drop", ()), features.get("id_column")}
    named.add((_plain(data.get("policy")) or {}).get("time_column"))
    for entity in map(_plain, data.get("entities") or ()):
        named |= {entity.get("key"), entity.get("time")}
        for feature in map(_plain, entity.get("features") or ()):
            if feature.get("of") is not None:
                named |= set(reads(feature["of"]))
            named |= set(feature.get("over") or ())
    return {n for n in named if n is not None}


def map_columns(data: dict[str, Any]) -> dict[str, Any]:
    """The config's column names read through its ``columns`` mapping (see the module docstring). Applying it to
    a config it was already applied to changes nothing: a bundle's config loads as it was fitted."""
    mapping = data.get("columns") or {}
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ValueError("columns must map the config's column names to the data's: {merchant: merchant_id}")
    if not mapping:
        return data
    chained = sorted(set(mapping) & {v for v in mapping.values() if v})
    if chained:
        raise ValueError(f"columns maps to {chained}, which it also renames; map each name straight to the data's")
    named = _named(data)
    unknown = [k for k, v in mapping.items() if k not in named and (not v or v not in named) and v]
    if unknown:
        raise ValueError(
            f"columns renames {unknown}, which this config never names (it names {sorted(named)[:20]}); "
            "write NAME=COLUMN with the config's name first"
        )

    def one(name: str | None) -> str | None:
        return (mapping[name] or None) if name in mapping else name

    data = dict(data)
    features = dict(_plain(data.get("features")) or {})
    if features:
        features["drop"] = [one(c) for c in features.get("drop", ()) if one(c) is not None]
        features["id_column"] = one(features.get("id_column"))
        data["features"] = features
    policy = dict(_plain(data.get("policy")) or {})
    if policy.get("time_column") is not None:
        data["policy"] = {**policy, "time_column": one(policy["time_column"])}
    entities = []
    for entity in map(_plain, data.get("entities") or ()):
        entity = {**entity, "key": one(entity.get("key")), "time": one(entity.get("time"))}
        entity["features"] = [
            {**f, "of": _renamed_of(f["of"], mapping)} if f.get("of") is not None else _renamed_over(f, mapping)
            for f in map(_plain, entity.get("features") or ())
        ]
        entities.append(entity)
    if entities:
        data["entities"] = entities
    return data


def _reads_sensor(feature: dict[str, Any]) -> bool:
    of = feature.get("of")
    return of is not None and (of == SENSOR or SENSOR in reads(of))


def _sensor_columns(
    rule: str | Sequence[str],
    entity: dict[str, Any],
    data: dict[str, Any],
    columns: Sequence[str],
    numeric: Collection[str],
) -> list[str]:
    features = _plain(data.get("features")) or {}
    if isinstance(rule, str):
        if rule != "numeric":
            raise ConfigError(f"sensors: {rule!r}: write numeric, or a list of column names and patterns (temp_*)")
        left_out = {entity.get("key"), entity.get("time"), features.get("id_column"), *features.get("drop", ())}
        found = [c for c in columns if c in numeric and c not in left_out]
    else:
        found = []
        for pattern in rule:
            matched = [c for c in columns if fnmatch.fnmatchcase(c, pattern)]
            if not matched:
                shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
                raise ConfigError(f"sensors: {pattern!r} matches no column of the data (it has {shown})")
            found += [c for c in matched if c not in found]
    if not found:
        raise ConfigError(
            "sensors: numeric found no numeric column besides the key, time, id and drop columns; "
            "list the sensor columns (sensors: [temp, pressure])"
        )
    return found


def expand_sensors(data: dict[str, Any], columns: Sequence[str], numeric: Collection[str]) -> dict[str, Any]:
    """Each entity block's ``sensors:`` rule made concrete for data with ``columns`` (``numeric``: those that are
    numbers): its ``sensor`` features once per sensor, ``sensor`` in ``drop`` as the sensor columns."""
    entities, sensors_all = [], []
    for entity in map(_plain, data.get("entities") or ()):
        rule = entity.get("sensors")
        if rule is None:
            entities.append(entity)
            continue
        sensors = _sensor_columns(rule, entity, data, columns, numeric)
        sensors_all += [s for s in sensors if s not in sensors_all]
        features = []
        for feature in map(_plain, entity.get("features") or ()):
            if not _reads_sensor(feature):
                features.append(feature)
                continue
            if feature.get("kind") == "state":  # the sensors together: none with fewer than two; with many, fewer
                learn = min(feature.get("learn") or STATE_LEARN, max(10, STATE_NUMBERS // max(len(sensors), 1)))
                features += (
                    [{**feature, "of": None, "over": list(sensors), "learn": learn}] if len(sensors) >= 2 else []
                )
                continue
            for sensor in sensors:
                of = sensor if feature["of"] == SENSOR else rename_columns(feature["of"], {SENSOR: sensor})
                name = feature.get("name")
                features.append({**feature, "of": of, "name": name.replace("{sensor}", sensor) if name else None})
        if not features:  # its only features were a state over fewer than two sensors
            raise ConfigError(
                f"an entity block's 'state' feature reads two sensors or more, but its sensors: rule finds only "
                f"{sensors} in the data; give it more sensors, or add features of one sensor (of: sensor)"
            )
        entities.append({**entity, "features": features, "sensors": sensors})
    if not sensors_all:
        return data
    section: dict[str, Any] = dict(_plain(data.get("features")) or {})
    drop = list(section.get("drop", ()))
    if SENSOR in drop and SENSOR not in columns:
        at = drop.index(SENSOR)
        drop[at : at + 1] = [s for s in sensors_all if s not in drop]
        section["drop"] = drop
    return {**data, "features": section, "entities": entities}
