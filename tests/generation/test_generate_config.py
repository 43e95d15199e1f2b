"""``geosane generate --config FILE key=value ... --flags``: one schema, defaults on the dataclass."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from geosane.errors import ConfigError, GeosaneError
from geosane.generation.config import GenerateConfig, load_generate_config, validate_config
from tests.conftest import run_cli

from .test_generate import PROMPT, setup  # noqa: F401 (the module's zoo, store and autoencoder fixture)

REQUIRED = {"ae": "ae.safetensors", "prompt": PROMPT, "out": "gen"}


def _yaml(path: Path, **values: object) -> Path:
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    return path


def test_the_defaults_live_on_the_dataclass_and_files_overrides_and_flags_stack(tmp_path: Path) -> None:
    plain = load_generate_config(None, [], REQUIRED)
    defaults = GenerateConfig(Path("ae.safetensors"), PROMPT, Path("gen"))
    assert plain == defaults
    config = _yaml(tmp_path / "g.yaml", **REQUIRED, num_candidates=6, top_k=2, bandwidth=0.4, generate_only=["*bn*"])
    cfg = load_generate_config(config, ["top_k=3", "seed=4"], {"top_k": 5, "seed": None, "proxy": None})
    assert (cfg.num_candidates, cfg.bandwidth, cfg.generate_only) == (6, 0.4, ["*bn*"])  # the file
    assert cfg.seed == 4 and cfg.top_k == 5  # an override over the file, a flag over both; None: not given
    assert cfg.ae == Path("ae.safetensors") and cfg.kde_mode == defaults.kde_mode


def test_the_packaged_preset_sets_only_what_it_changes() -> None:
    cfg = load_generate_config("anchored", [], {**REQUIRED, "store": Path("store")})
    assert (cfg.bandwidth, cfg.anchors, cfg.decode) == (0.5, 4, "residual")
    others = {f.name for f in dataclasses.fields(GenerateConfig)} - {"bandwidth", "anchors", "decode", "store"}
    defaults = GenerateConfig(Path("ae.safetensors"), PROMPT, Path("gen"))
    assert all(getattr(cfg, name) == getattr(defaults, name) for name in others)
    validate_config(dataclasses.replace(cfg, out=Path("/nonexistent/gen")))


def test_bad_files_and_missing_inputs_are_refused_naming_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'bandwith'; did you mean 'bandwidth'"):
        load_generate_config(_yaml(tmp_path / "typo.yaml", **REQUIRED, bandwith=0.3))
    with pytest.raises(ConfigError, match=r"invalid value 'jiont' for 'kde_mode': expected one of token, joint"):
        load_generate_config(None, ["kde_mode=jiont"], REQUIRED)
    with pytest.raises(ConfigError, match=r"missing required setting\(s\) ae, out \(give them in the config file or directly\)"):
        load_generate_config(None, [], {"prompt": PROMPT})
    with pytest.raises(ConfigError, match=r"config file not found: nope"):
        load_generate_config("nope", [], REQUIRED)
    # a flag is taken as given, so the pipeline's check reports it (the CLI names the flag)
    cfg = load_generate_config(None, [], {**REQUIRED, "proxy": "nope"})
    with pytest.raises(GeosaneError, match=r"proxy must be one of knn, linear, got 'nope'") as caught:
        validate_config(cfg)
    assert caught.value.cli_message() == "--proxy must be one of knn, linear, got 'nope'"


def test_the_cli_reads_a_config_and_its_flags_win(
    setup: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "gen"
    config = _yaml(tmp_path / "g.yaml", ae=str(setup["ae"]), prompt=PROMPT, out=str(out), random_init=True,
                   num_candidates=3, top_k=4, seed=5)  # fmt: skip
    code, _, err = run_cli(capsys, "generate", "--config", str(config))
    assert code == 2 and "--top-k 4 must be between 1 and --num-candidates (3)" in err and not out.exists()
    code, _, err = run_cli(capsys, "generate", "--config", str(config), "top_k=1", "num_candidates=2", "--seed", "7")
    assert code == 0, err
    card = json.loads((out / "model_card.json").read_text())
    assert (card["seed"], card["num_candidates"], card["top_k"]) == (7, 2, 1)
    assert card["prompt_info"]["pretrained"] is False  # random_init from the file
    code, _, err = run_cli(capsys, "generate", "--config", str(config), "top_k=1")
    assert code == 2 and "already holds generated weights" in err  # overwrite is off unless set
