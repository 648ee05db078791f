"""The docs site and the README say what the code does: the site builds with ``mkdocs build --strict`` (every
link and anchor resolves, every API page renders from the docstrings), every ``segscope`` command and flag they
show exists, the configuration reference names every config key, and the API reference every public name.

The site is built here rather than as a Makefile step so that `make test`, `make test-fast` and CI all build it,
and a failure reads like any other test's (about 8 s on 2 cores)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import segscope
from segscope import config as cfg
from segscope import config_kafka

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    # mkdocs comes with the `docs` extra, which `make install-dev` installs: a missing one fails, it is not skipped
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    hint = "mkdocs build --strict failed (`make install-dev` installs mkdocs)"
    assert out.returncode == 0, f"{hint}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("segscope.Model.score") >= 1


def test_every_public_name_is_in_the_api_reference() -> None:
    api = (DOCS / "api.md").read_text()
    missing = [n for n in segscope.__all__ if n != "__version__" and f"::: segscope.{n}" not in api]
    assert not missing, f"add `::: segscope.NAME` to docs/api.md for {missing}"


def test_the_configuration_reference_names_every_key() -> None:
    text = (DOCS / "configuration.md").read_text()
    models: list[Any] = [
        cfg.SegscopeConfig,
        cfg.DetectorConfig,
        cfg.FeatureConfig,
        cfg.PolicyConfig,
        cfg.SegmentsConfig,
        cfg.EntityConfig,
        cfg.EntityFeatureConfig,
        config_kafka.KafkaConfig,
        config_kafka.MessagesConfig,
        config_kafka.SchemaRegistryConfig,
    ]
    missing = [f"{m.__name__}.{k}" for m in models for k in m.model_fields if f"| `{k}` |" not in text]
    assert not missing, f"docs/configuration.md has no row for {missing}"


def _cli() -> Any:
    import typer

    import segscope.cli  # noqa: F401 - registers every command
    from segscope.cli._app import app

    return typer.main.get_command(app)


def _shown_commands(text: str) -> list[list[str]]:
    """Every `segscope ...` command line in a text's code blocks and inline code (continuation lines joined)."""
    lines: list[str] = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`(segscope [^`]+)`", text)
    commands = []
    for line in lines:
        line = line.strip().removeprefix("$ ")
        if not line.startswith("segscope "):
            continue
        line = line.split(" #")[0].split(" | ")[0]
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        commands.append(words[1:])
    return commands


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_commands_and_flags_shown_exist(page: Path) -> None:
    root = _cli()
    wrong = []
    for words in _shown_commands(page.read_text()):
        command, rest = root, list(words)
        while rest and hasattr(command, "commands") and rest[0] in command.commands:
            command = command.commands[rest.pop(0)]
        if command is root:
            if rest and re.fullmatch(r"[a-z-]+", rest[0]) and rest[0] not in ("...",):
                wrong.append(f"segscope {rest[0]}: no such command")
            continue
        flags = {o for p in command.params for o in [*p.opts, *p.secondary_opts]} | {"--help"}
        for word in rest:
            flag = word.split("=")[0].strip("[]")
            if flag.startswith("-") and flag != "-" and flag not in flags:
                wrong.append(f"segscope {' '.join(words[: len(words) - len(rest)])}: no option {flag}")
    assert not wrong, f"{page.name} shows what the CLI does not have: {sorted(set(wrong))}"


def test_docs_and_readme_cite_no_local_data_folder() -> None:
    for page in [ROOT / "README.md", *PAGES]:
        text = page.read_text()
        assert "../shared" not in text and "shared/" not in text, f"{page.name} mentions the shared data folder"
