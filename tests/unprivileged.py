"""Run the CLI as a process that file permissions apply to.

Tests run as root in CI, and root reads and writes everything; so as root the command runs with the two
capabilities that bypass permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped from its bounding set
(util-linux's ``setpriv``). As another user, permissions already apply.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli_unprivileged(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "segscope.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=300,
    )
