"""Tiny random diffusers models saved in the diffusers directory layout, shared by difuser tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def save_pixel_unet(root: Path) -> Path:
    """A tiny UNet2DModel (16 px, two levels, attention in the low-res up-block) + DDPM scheduler."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    )
    unet.save_pretrained(root / "unet", safe_serialization=True)
    DDPMScheduler(steps_offset=1).save_pretrained(root / "scheduler")
    return root


def save_latent_unet(root: Path) -> Path:
    """A tiny UNet2DConditionModel (cross-attention, metadata projection) + tiny AutoencoderKL."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        attention_head_dim=4,
        norm_num_groups=4,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=3,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    unet.save_pretrained(root / "unet", safe_serialization=True)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    DDIMScheduler(beta_schedule="scaled_linear", steps_offset=1, clip_sample=False).save_pretrained(
        root / "scheduler"
    )
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


@pytest.fixture(scope="session")
def pixel_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pixel_unet(tmp_path_factory.mktemp("pixel_ddpm"))


@pytest.fixture(scope="session")
def latent_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_latent_unet(tmp_path_factory.mktemp("latent_sd"))


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models run fastest on one thread (and do not spin-wait on a shared, oversubscribed CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# DiffusionSat's SatUNet.__init__ signature (diffusionsat/sat_unet.py): these are exactly the fields its
# register_to_config writes into unet/config.json, with DiffusionSat's defaults except for the tiny sizes.
DIFFUSIONSAT_UNET_CONFIG = {
    "_class_name": "SatUNet",
    "_diffusers_version": "0.17.0.dev0",
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 4,
    "norm_eps": 1e-05,
    "cross_attention_dim": 12,
    "attention_head_dim": [2, 4],
    "dual_cross_attention": False,
    "use_linear_projection": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "use_metadata": True,
    "num_metadata": 7,
}


def diffusionsat_state_dict(config: dict | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the published DiffusionSat UNet key layout (float32, as its checkpoints).

    The SD2 part comes from diffusers' UNet2DConditionModel with the same config (its key names are
    those of DiffusionSat's diffusers 0.17 fork); ``metadata_embedding.{i}`` is built here from the
    DiffusionSat source's shapes: ``TimestepEmbedding(block_out_channels[0], 4 * block_out_channels[0])``
    = ``linear_1`` [4c, c] + bias, ``linear_2`` [4c, 4c] + bias, one per metadata value.
    """
    from diffusers import UNet2DConditionModel

    config = dict(config or DIFFUSIONSAT_UNET_CONFIG)
    base = {
        k: v for k, v in config.items() if not k.startswith("_") and k not in ("use_metadata", "num_metadata")
    }
    torch.manual_seed(seed)
    sd2 = dict(UNet2DConditionModel(**base).state_dict())
    c = config["block_out_channels"][0]
    gen = torch.Generator().manual_seed(seed + 1)
    metadata: dict[str, torch.Tensor] = {}
    for i in range(config["num_metadata"] if config["use_metadata"] else 0):
        metadata[f"metadata_embedding.{i}.linear_1.weight"] = torch.randn(4 * c, c, generator=gen) * 0.5
        metadata[f"metadata_embedding.{i}.linear_1.bias"] = torch.randn(4 * c, generator=gen) * 0.5
        metadata[f"metadata_embedding.{i}.linear_2.weight"] = torch.randn(4 * c, 4 * c, generator=gen) * 0.5
        metadata[f"metadata_embedding.{i}.linear_2.bias"] = torch.randn(4 * c, generator=gen) * 0.5
    # SatUNet.__init__ registers metadata_embedding after the time / class embeddings, before down_blocks
    state: dict[str, torch.Tensor] = {}
    for key, value in sd2.items():
        if key.startswith("down_blocks.") and metadata:
            state.update(metadata)
            metadata = {}
        state[key] = value
    return state


def save_diffusionsat(root: Path, weights: str = "safetensors", config: dict | None = None) -> Path:
    """A DiffusionSat checkpoint directory: SatUNet (config + weights as safetensors or a weights-only
    ``.bin``, as diffusers 0.17 saved it), the tiny VAE of :func:`save_latent_unet`, a DDIM scheduler."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    save_latent_unet(root)
    unet_dir = root / "unet"
    for old in unet_dir.iterdir():
        old.unlink()
    config = dict(config or DIFFUSIONSAT_UNET_CONFIG)
    (unet_dir / "config.json").write_text(json.dumps(config, indent=2))
    state = diffusionsat_state_dict(config)
    if weights == "safetensors":
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            str(unet_dir / "diffusion_pytorch_model.safetensors"),
        )
    else:
        torch.save(state, unet_dir / "diffusion_pytorch_model.bin")
        vae = AutoencoderKL.from_pretrained(str(root / "vae"))
        for old in (root / "vae").glob("*.safetensors"):
            old.unlink()
        torch.save(vae.state_dict(), root / "vae" / "diffusion_pytorch_model.bin")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "DiffusionSatPipeline"}))
    return root


@pytest.fixture(scope="session")
def diffusionsat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_diffusionsat(tmp_path_factory.mktemp("diffusionsat"))


@pytest.fixture(scope="session")
def diffusionsat_bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_diffusionsat(tmp_path_factory.mktemp("diffusionsat_bin"), weights="bin")
