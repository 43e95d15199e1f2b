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
