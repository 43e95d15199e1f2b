from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from geosane.config import compose, load_config, parse_overrides, save_config
from geosane.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Experiment:
    name: str = "x"
    mode: Literal["dense", "row"] = "dense"
    steps: int = 10
    out: Path | None = None
    tags: list[str] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_bases_merge_in_order_with_nested_bases(tmp_path: Path) -> None:
    write(tmp_path / "root.yaml", "steps: 1\noptim: {lr: 0.1, betas: [0.5, 0.5]}\nname: root\n")
    write(tmp_path / "mid.yaml", "base: root.yaml\nsteps: 2\noptim: {lr: 0.2}\n")
    write(tmp_path / "other.yaml", "steps: 3\ntags: [a]\n")
    exp = write(tmp_path / "exp.yaml", "base: [mid.yaml, other.yaml]\nname: exp\n")
    data = compose(exp)
    # later bases override earlier, the experiment itself last, nested dicts merge
    assert data == {"steps": 3, "optim": {"lr": 0.2, "betas": [0.5, 0.5]}, "name": "exp", "tags": ["a"]}
    cfg = load_config(Experiment, exp, ["optim.lr=3e-4", "mode=row", "tags=[b, c]"])
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML reads 3e-4 as a string; coerced to float
    assert cfg.optim.betas == (0.5, 0.5)
    assert cfg.mode == "row" and cfg.tags == ["b", "c"] and cfg.steps == 3


def test_unknown_key_names_closest_valid_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'\?"):
        load_config(Experiment, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'stpes'; did you mean 'steps'\?"):
        load_config(Experiment, write(tmp_path / "bad.yaml", "stpes: 3\n"))


def test_bad_values_are_reported_with_their_key() -> None:
    with pytest.raises(ConfigError, match=r"invalid value 'dens' for 'mode'.*did you mean 'dense'"):
        load_config(Experiment, None, ["mode=dens"])
    with pytest.raises(ConfigError, match=r"'steps' must be an integer"):
        load_config(Experiment, None, ["steps=ten"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])


def test_base_cycle_and_missing_base(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        compose(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"base config 'nowhere\.yaml'"):
        compose(tmp_path / "c.yaml")


def test_save_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(Experiment, None, ["out=/tmp/x", "optim.lr=0.5"])
    path = save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Experiment, path) == cfg
