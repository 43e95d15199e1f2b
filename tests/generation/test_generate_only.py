"""``generate_only`` / ``--generate-only``: generate only the tensors whose names match, keep the rest
of the prompt bit for bit (p-diff's lever), on a real small timm ResNet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from geosane.autoencoder import ModelConfig, WeightAutoencoder, save_autoencoder
from geosane.errors import GeosaneError
from geosane.generation import generate, prepare_prompt
from geosane.generation.pipeline import config_from_kwargs
from geosane.tokens.store import tokenize_zoo
from geosane.zoo import ArchSpec, LoadedModel, Zoo
from tests.conftest import run_cli


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> Iterator[None]:
    yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """A zoo of two test_resnet models (3 classes), its token store and an untrained autoencoder export."""
    root = tmp_path_factory.mktemp("gen_only")
    zoo = Zoo.create(root / "zoo")
    arch = ArchSpec("timm", "test_resnet", {"num_classes": 3})
    for seed in range(2):
        torch.manual_seed(seed)
        model = timm.create_model("test_resnet", num_classes=3)
        zoo.add(LoadedModel("timm:test_resnet", model.state_dict(), arch), model_id=f"resnet-{seed}")
    store = tokenize_zoo(zoo, root / "store", token_size=32)
    torch.manual_seed(0)
    config = ModelConfig(
        d_t=32, d_model=32, n_heads=2, n_layers=1, lat_dim=16, window=16,
        max_layers=256, max_chunks=256, proj_hidden=16, proj_dim=8,
    )  # fmt: skip
    save_autoencoder(
        WeightAutoencoder(config), root / "ae.safetensors", extra={"tokenizer": json.dumps(store.settings)}
    )
    return {"root": root, "ae": root / "ae.safetensors", "prompt": f"zoo:{root / 'zoo'}#resnet-0"}


def _cfg(setup: dict[str, Path | str], out: Path, select: Path | None, **kwargs: object) -> object:
    defaults = dict(
        ae=setup["ae"], prompt=setup["prompt"], out=out, num_candidates=3, top_k=2,
        select_data=select, select_split="all", image_size=32,
    )  # fmt: skip
    return config_from_kwargs(**{**defaults, **kwargs})


def _prompt_as_generation_saw_it(
    source: str, num_classes: int | None, in_chans: int | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The prepared prompt (head for the classes, stem adapted) exactly as ``generate`` tokenized it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return prepare_prompt(source, num_classes, in_chans).state_dict


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


@pytest.mark.parametrize("decode", ["direct", "residual"])
def test_only_matching_tensors_are_generated(
    setup: dict[str, Path | str], tiny_image_folder: Path, tmp_path: Path, decode: str
) -> None:
    """Every tensor matching no pattern is the prompt's, bitwise, in every kept candidate; the card says
    which were generated and which are the prompt's."""
    patterns = ["*bn*"]
    out = tmp_path / "gen"
    # bn_batches=0: no BatchNorm recalibration, so even the running statistics are the prompt's
    result = generate(
        _cfg(setup, out, tiny_image_folder, generate_only=patterns, bn_batches=0, decode=decode)
    )
    prompt = _prompt_as_generation_saw_it(str(setup["prompt"]), num_classes=3)
    for file in result.files[:2]:
        weights = load_file(str(file))
        assert sorted(weights) == sorted(prompt)
        kept = [n for n in prompt if not _matches(n, patterns)]
        assert kept and all(
            torch.equal(weights[n], prompt[n]) and weights[n].dtype == prompt[n].dtype for n in kept
        )
        generated = [n for n in prompt if _matches(n, patterns) and prompt[n].is_floating_point()]
        assert any(not torch.equal(weights[n], prompt[n]) for n in generated if "running" not in n)
    card = json.loads((out / "model_card.json").read_text())
    assert card == result.card and card["generate_only"] == patterns
    assert card["generated_tensors"] and all(_matches(n, patterns) for n in card["generated_tensors"])
    assert card["prompt_tensors"] and not any(_matches(n, patterns) for n in card["prompt_tensors"])
    assert "bn1.weight" in card["generated_tensors"] and "layer1.0.bn1.bias" in card["generated_tensors"]
    assert {"conv1.0.weight", "layer1.0.conv1.weight", "fc.weight", "fc.bias"} <= set(card["prompt_tensors"])
    assert "conv1.1.weight" in card["prompt_tensors"]  # a stem BatchNorm whose name lacks "bn"
    # generated + prompt tensors are exactly the tokenized ones; the carried ones are listed as before
    assert not set(card["generated_tensors"]) & set(card["prompt_tensors"])
    assert "bn1.running_mean" in card["carried_tensors"] and "fc.weight" not in card["carried_tensors"]
    assert sorted(card["generated_tensors"] + card["prompt_tensors"] + card["carried_tensors"]) == sorted(
        prompt
    )
    assert "prompt_tensors match no generate_only pattern" in card["carried_note"]


def test_kept_tensors_survive_batchnorm_recalibration_and_stem_adaptation(
    setup: dict[str, Path | str], tiny_image_folder: Path, tmp_path: Path
) -> None:
    """BN recalibration runs on the assembled model: learnable kept tensors stay the prompt's, BN running
    statistics outside the patterns are recalibrated like any carried ones. Kept tensors come from the
    prompt after stem adaptation."""
    patterns = ["layer4.*", "fc.*"]
    result = generate(
        _cfg(setup, tmp_path / "gen", tiny_image_folder, generate_only=patterns, num_candidates=2)
    )
    prompt = _prompt_as_generation_saw_it(str(setup["prompt"]), num_classes=3)
    weights = load_file(str(result.files[0]))
    carried = set(result.card["carried_tensors"])
    assert set(result.card["prompt_tensors"]) == {n for n in prompt if not _matches(n, patterns)} - carried
    assert all(torch.equal(weights[n], prompt[n]) for n in result.card["prompt_tensors"])
    assert not torch.equal(weights["fc.weight"], prompt["fc.weight"])
    assert result.card["candidates"][0]["bn_recalibrated_on"] == 24
    assert not torch.equal(weights["bn1.running_mean"], prompt["bn1.running_mean"])  # recalibrated
    assert "recalibrated" in result.card["carried_note"]

    six = generate(
        _cfg(setup, tmp_path / "six", None, generate_only=["*bn*"], num_candidates=1, top_k=1, in_chans=6)
    )
    adapted = _prompt_as_generation_saw_it(str(setup["prompt"]), num_classes=None, in_chans=6)
    got = load_file(str(six.files[0]))
    assert got["conv1.0.weight"].shape[1] == 6 and torch.equal(
        got["conv1.0.weight"], adapted["conv1.0.weight"]
    )
    assert all(torch.equal(got[n], adapted[n]) for n in adapted if not _matches(n, ["*bn*"]))


def test_default_generates_every_tokenized_tensor(setup: dict[str, Path | str], tmp_path: Path) -> None:
    result = generate(_cfg(setup, tmp_path / "gen", None, num_candidates=1, top_k=1))
    assert result.card["generate_only"] == [] and result.card["prompt_tensors"] == []
    assert (
        "fc.weight" in result.card["generated_tensors"]
        and "conv1.0.weight" in result.card["generated_tensors"]
    )


def test_cli_flag_is_repeatable(
    setup: dict[str, Path | str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen"
    code, _, err = run_cli(
        capsys, "generate", "--ae", str(setup["ae"]), "--prompt", str(setup["prompt"]), "--out", str(out),
        "--num-candidates", "1", "--top-k", "1",
        "--generate-only", "*bn*", "--generate-only", "fc.*", "--generate-only", "head.*",
    )  # fmt: skip
    assert code == 0, err
    card = json.loads((out / "model_card.json").read_text())
    assert card["generate_only"] == ["*bn*", "fc.*", "head.*"] and "fc.weight" in card["generated_tensors"]
    assert "--generate-only 'head.*' matches no tensor of the prompt" in " ".join(err.split())  # a warning
    assert "layer1.0.conv1.weight" in card["prompt_tensors"]


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        (
            ["*foo*"],
            "--generate-only '*foo*' matches no tensor of the prompt (tensors look like: conv1.0.weight, ",
        ),
        (["*foo*", "BN*"], "--generate-only '*foo*' --generate-only 'BN*' match no tensor of the prompt"),
        (["*running_mean"], "matches only tensors carried from the prompt unchanged (conv1.1.running_mean, "),
    ],
)
def test_patterns_matching_no_generated_tensor_are_refused_before_anything_is_written(
    setup: dict[str, Path | str], tiny_image_folder: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], patterns: list[str], message: str,
) -> None:  # fmt: skip
    out = tmp_path / "never"
    flags = [arg for p in patterns for arg in ("--generate-only", p)]
    code, _, err = run_cli(
        capsys, "generate", "--ae", str(setup["ae"]), "--prompt", str(setup["prompt"]), "--out", str(out),
        "--select-data", str(tiny_image_folder), "--select-split", "all", "--image-size", "32", *flags,
    )  # fmt: skip
    assert code == 2 and message in " ".join(err.split()), err
    assert ", ..., fc.bias)" in err  # the examples span the model, head included
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["tiny_folder"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([""], "generate_only patterns must be non-empty strings"),
        (["*bn*", "  "], "generate_only patterns must be non-empty strings"),
        ("*bn*", "generate_only must be a list of glob patterns"),
    ],
)
def test_bad_patterns_are_refused_by_validation(
    setup: dict[str, Path | str], tmp_path: Path, value: object, message: str
) -> None:
    with pytest.raises(GeosaneError, match=message):
        generate(_cfg(setup, tmp_path / "never", None, generate_only=value))
    assert not (tmp_path / "never").exists()
