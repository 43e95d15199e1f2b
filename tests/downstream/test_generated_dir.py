"""The downstream reader against what `geosane generate` really writes (a real, tiny generate run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from geosane.autoencoder import WeightAutoencoder, save_autoencoder
from geosane.autoencoder.config import ModelConfig
from geosane.downstream import build_initializations, load_compare_config, read_generated_dir, run_compare
from geosane.errors import GeosaneError
from geosane.generation.pipeline import config_from_kwargs, generate
from geosane.zoo import ArchSpec, LoadedModel, Zoo

from .downstream_fakes import perturbed

ARCH = ArchSpec("timm", "test_resnet", {"num_classes": 7})


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory: pytest.TempPathFactory, rsscn7_root: Path) -> dict[str, Path]:
    """A zoo (test_resnet base + 2 children), a random-init autoencoder export and `generate` output."""
    root = tmp_path_factory.mktemp("gen-downstream")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        base = timm.create_model(ARCH.name, **ARCH.kwargs).state_dict()
        zoo = Zoo.create(root / "zoo")
        zoo.add(LoadedModel("timm:test_resnet", base, ARCH), model_id="base")
        for i in range(2):
            member = LoadedModel(f"child-{i}", perturbed(base, i, 0.02), ARCH)
            zoo.add(member, model_id=f"child-{i}", metadata={"init_from": "base"})
        select = root / "select"  # three images per class of the real data
        for folder in sorted(p for p in rsscn7_root.iterdir() if p.is_dir()):
            (select / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:3]:
                shutil.copy(image, select / folder.name / image.name)
        config = ModelConfig(d_t=64, d_model=16, n_heads=2, n_layers=1, lat_dim=4, window=64, proj_hidden=8)
        ae = save_autoencoder(WeightAutoencoder(config), root / "ae.safetensors")
        gen = generate(
            config_from_kwargs(
                ae=ae, prompt=f"zoo:{zoo.path}#base", out=root / "generated", num_candidates=3, top_k=2,
                select_data=select, select_split="all", image_size=16, bandwidth=0.1, bn_batches=1,
            )
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return {"zoo": zoo.path, "generated": gen.out, "select": select}


def test_reader_parses_what_generate_writes(generated_run: dict[str, Path]) -> None:
    path = generated_run["generated"]
    card = json.loads((path / "model_card.json").read_text())
    parsed = read_generated_dir(path)
    assert parsed.prompt == card["prompt"] == f"zoo:{generated_run['zoo']}#base"
    assert parsed.arch.name == "test_resnet" and parsed.arch.kwargs["num_classes"] == 7
    assert [c.rank for c in parsed.candidates] == [1, 2]
    assert [c.file.name for c in parsed.candidates] == [c["file"] for c in card["candidates"]]
    assert [c.proxy_score for c in parsed.candidates] == [c["proxy_score"] for c in card["candidates"]]
    assert parsed.candidates[0].proxy_score >= parsed.candidates[1].proxy_score
    assert all(c.proxy == "knn" for c in parsed.candidates)
    assert parsed.generated_tensors == card["generated_tensors"] and parsed.carried_tensors


def test_compare_fine_tunes_the_generated_candidates_by_rank(
    generated_run: dict[str, Path], rsscn7_root: Path, tmp_path: Path
) -> None:
    overrides = [
        f"generated.dir={generated_run['generated']}", f"zoo.dir={generated_run['zoo']}",
        f"data.root={rsscn7_root}", f"out={tmp_path / 'cmp'}", "inits=[prompt, ties, generated]",
        "generated.top_k=2", "seeds=[0]", "data.image_size=16", "data.train_per_class=2",
        "data.max_samples.select=7", "data.max_samples.test=14", "train.epochs=1", "train.batch_size=14",
    ]  # fmt: skip
    config = load_compare_config("compare_rsscn7", overrides)
    arch, inits = build_initializations(config)  # the architecture comes from the model card
    assert arch.name == "test_resnet"
    by_name = {i.name: i for i in inits}
    assert list(by_name) == ["prompt", "ties", "generated-1", "generated-2"]
    for rank in (1, 2):
        saved = load_file(generated_run["generated"] / f"candidate_{rank}.safetensors")
        assert all(torch.equal(saved[k], by_name[f"generated-{rank}"].state_dict[k]) for k in saved)
    prompt = Zoo(generated_run["zoo"]).load_state_dict("base")
    assert all(torch.equal(prompt[k], by_name["prompt"].state_dict[k]) for k in prompt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_compare(config, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.report.is_file() and "| generated-1 |" in result.report.read_text()
    assert sorted(result.results) == ["generated-1", "generated-2", "prompt", "ties"]
    notes = result.report.read_text()
    assert str(generated_run["generated"]) in notes and "proxy knn" in notes


def test_a_card_without_candidates_or_with_a_missing_file_is_refused(
    generated_run: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "gen"
    shutil.copytree(generated_run["generated"], copy)
    (copy / "candidate_2.safetensors").unlink()
    with pytest.raises(GeosaneError, match=r"candidate file candidate_2\.safetensors is missing"):
        read_generated_dir(copy)
    card = json.loads((copy / "model_card.json").read_text())
    card["format"] = "something-else"
    (copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(GeosaneError, match="not a `geosane generate` model card"):
        read_generated_dir(copy)


def test_a_random_init_prompt_without_selection_data(generated_run: dict[str, Path], tmp_path: Path) -> None:
    """No selection data: NaN proxy scores become None; a random-init prompt is no 'prompt' baseline."""
    gen = generate(
        config_from_kwargs(
            ae=generated_run["generated"].parent / "ae.safetensors", prompt="timm:test_resnet",
            random_init=True, num_classes=7, out=tmp_path / "gen", num_candidates=2, top_k=1,
        )
    )  # fmt: skip
    parsed = read_generated_dir(gen.out)
    assert parsed.prompt_is_random_init and [c.proxy_score for c in parsed.candidates] == [None]
    common = [f"generated.dir={gen.out}", "generated.top_k=1", "data.root=/nonexistent", f"out={tmp_path}/o"]
    config = load_compare_config("compare_rsscn7", [*common, "inits=[scratch, generated]"])
    _, inits = build_initializations(config)
    assert [i.name for i in inits] == ["scratch", "generated-1"] and "nan" not in inits[1].source
    config = load_compare_config("compare_rsscn7", [*common, "inits=[prompt, generated]"])
    with pytest.raises(GeosaneError, match=r"random weights .* remove 'prompt' from inits or set prompt: SOURCE"):
        build_initializations(config)
