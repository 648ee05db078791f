"""What ``--store`` names, checked before anything is opened: the SQLAlchemy URL, its password kept out of every
message (``user:***@host``), and a SQLite file that belongs to another application (refused, never migrated)."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from segscope.exceptions import ConfigError

__all__ = ["STORE_TABLES", "hide_password", "mask_password", "refuse_foreign_sqlite", "sqlite_locking", "store_url"]

#: The tables of a segscope label store, Alembic's version table included.
STORE_TABLES = frozenset({"records", "labels", "alembic_version"})
_MIGRATIONS = Path(__file__).parent / "migrations"
_USERINFO_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s]*@")  # up to the host's '@'
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


def store_url(text: str | Path) -> str:
    """``labels.db`` / ``sqlite:///labels.db`` / ``postgresql://user@host:port/db`` -> a SQLAlchemy URL."""
    text = str(text)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser()}"
    scheme, rest = text.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        full = "postgresql+psycopg://" + rest
    elif scheme.startswith(("sqlite", "postgresql+")):
        full = text
    else:
        raise ConfigError(
            f"--store {hide_password(text)!r}: use a file path (SQLite) or a postgresql://user@host:port/db URL"
        )
    if not scheme.startswith("sqlite") and rest.count("@") > 1:  # where the password ends would be a guess
        raise ConfigError(
            f"--store {hide_password(text)}: the URL holds more than one '@'; write an '@' in the user name or "
            "password as %40"
        )
    return full


def _passwords(text: str) -> list[str]:
    """The passwords written in a URL: ``scheme://user:password@host...`` and ``?password=...``."""
    if "://" not in text:
        return []
    found = []
    rest = text.split("://", 1)[1]
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        found.append(rest[:at].split(":", 1)[1])
    found += [match.group(2) for match in _QUERY_PASSWORD.finditer(text)]
    return [p for p in found if p]


def hide_password(text: str | Path) -> str:
    """A store URL (or a text holding some) as it may be shown: ``postgresql://user:secret@host/db`` ->
    ``postgresql://user:***@host/db``, and a ``password=`` query parameter as ``password=***``."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", str(text)))


def mask_password(message: str, url: str | Path) -> str:
    """``message`` (a driver's error, say) with the passwords of ``url`` replaced by ``***``, as written or
    percent-decoded."""
    secrets = {s for p in _passwords(str(url)) for s in (p, unquote(p)) if s}
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def refuse_foreign_sqlite(path: Path, shown: str) -> None:
    """Refuse an existing SQLite file that is not a segscope label store (tables of another application and no
    segscope version), so that opening it never adds segscope's tables to it. An empty or new file passes; a
    file that is not a database at all is left to the open that follows (which says so)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with closing(sqlite3.connect(path)) as conn:
            tables = {
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
                )
            }
            versions = (
                {str(v) for (v,) in conn.execute("SELECT version_num FROM alembic_version")}
                if "alembic_version" in tables
                else set()
            )
    except sqlite3.Error:
        return
    if not tables:
        return
    has_store_tables = {"records", "labels"} <= tables
    if versions and has_store_tables:
        unknown = versions - _revisions()
        if not unknown:
            return  # a segscope label store (perhaps with tables someone added beside it)
        raise ConfigError(
            f"--store {shown}: this label store was written by a newer segscope (schema revision "
            f"{', '.join(sorted(unknown))}); upgrade segscope to open it"
        )
    foreign = sorted(tables - STORE_TABLES) or sorted(tables)
    listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    raise ConfigError(
        f"--store {shown}: this SQLite file holds another application's tables ({listed}), not a segscope label "
        "store; nothing was changed: give --store a new file (created on first use) or an existing segscope store"
    )


def _revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory(str(_MIGRATIONS)).walk_revisions()}


def sqlite_locking(engine: Any, event: Any) -> None:
    """SQLite: WAL (readers never wait for the writer) and BEGIN IMMEDIATE (writers queue up at the start of a
    transaction instead of failing on upgrade); pysqlite's own transaction handling is switched off for it."""

    @event.listens_for(engine, "connect")  # type: ignore[untyped-decorator]
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")  # type: ignore[untyped-decorator]
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("segscope_write") else "BEGIN")
