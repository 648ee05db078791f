from __future__ import annotations

from pathlib import Path

import pytest

from segscope import ConfigError, SegscopeConfig, load_config
from segscope.config import DEFAULT_DETECTORS

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.*"))


def test_there_are_example_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, SegscopeConfig)
    assert cfg.detectors


def test_default_toml_is_the_default() -> None:
    cfg = load_config(Path(__file__).parent.parent / "configs" / "default.toml")
    assert [d.name for d in cfg.detectors] == [d.name for d in DEFAULT_DETECTORS]
    assert cfg.combine == SegscopeConfig().combine


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("combine = 'median'", "combine"),
        ("[[detectors]]\nname = 'iforest'\n[[detectors]]\nname = 'iforest'", "list each detector once"),
        ("[policy]\nkind = 'budget'\nper = 'day'", "needs policy.time_column"),
        ("[policy]\ncontamination = 2", "policy.contamination"),
        ("unknown_key = 1", "unknown_key"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_invalid_configs_give_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_config_extension(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{}")
    with pytest.raises(ConfigError, match="use .toml, .yaml or .yml"):
        load_config(path)


def test_frozen() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SegscopeConfig().seed = 3  # type: ignore[misc]
