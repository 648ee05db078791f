"""A real PostgreSQL server for tests: Debian's postgresql package (installed by `make test`), started with
initdb + pg_ctl in a temporary folder on a free loopback port, stopped afterwards."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.kafka_helpers import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:  # a missing install step, not a reason to skip
        raise AssertionError(f"PostgreSQL's {name} not found; `make test` installs Debian's postgresql package")
    return found[-1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield ``postgresql://USER@127.0.0.1:PORT/segscope`` of a fresh server. PostgreSQL refuses to run as root,
    so as root the server runs as the ``postgres`` user the Debian package creates."""
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else pwd.getpwuid(os.geteuid()).pw_name
    folder = Path(tempfile.mkdtemp(prefix="segscope-pg-", dir="/tmp"))
    data, log = folder / "data", folder / "server.log"
    prefix: list[str] = []
    if as_root:
        shutil.chown(folder, user)
        prefix = ["runuser", "-u", user, "--"]
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    run(_bin("initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
    run(_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    try:
        run(_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "segscope")
        yield f"postgresql://{user}@127.0.0.1:{port}/segscope"
    finally:
        subprocess.run([*prefix, _bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
