"""Headless Chromium (Debian's ``chromium``, installed by ``make test``) for tests that render pages."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: Screenshots and other files a person may want to look at after a run.
ARTIFACTS = Path(os.environ.get("SEGSCOPE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:  # a missing install step, not a reason to skip
        raise AssertionError("chromium is not installed; `make test` installs Debian's chromium package")
    return path


def render(url: str, *, screenshot: str | None = None, width: int = 1300, height: int = 3000) -> str:
    """Load ``url`` in headless Chromium, let its scripts run, and return the resulting DOM (and optionally save a
    screenshot under :data:`ARTIFACTS`)."""
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=20000",
        f"--window-size={width},{height}",
    ]
    if screenshot is not None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [*args, f"--screenshot={ARTIFACTS / screenshot}", url], check=True, capture_output=True, timeout=120
        )
    done = subprocess.run([*args, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120)
    return done.stdout
