from __future__ import annotations

import pytest
import torch

from geosane.arch import adapt_stem
from geosane.errors import GeosaneError
from geosane.generation.batchnorm import recalibrate_batchnorm
from geosane.generation.kde import sample_latents
from geosane.generation.proxy import knn_accuracy, linear_probe_accuracy
from geosane.zoo import resolve


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_adapted_stem_computes_the_same_function_on_repeated_bands(name: str) -> None:
    prompt = resolve(f"timm:{name}", random_init=True, num_classes=5)
    adapted = adapt_stem(prompt, in_chans=6)
    assert adapted.arch.kwargs["in_chans"] == 6 and adapted.info["stem_adapted_from"] == 3
    rgb_model, six_band_model = prompt.build().eval(), adapted.build().eval()
    x = torch.randn(2, 3, 224, 224) if "vit" in name else torch.randn(2, 3, 64, 64)
    # timm's rule repeats the RGB filters and rescales by 3/6: duplicated bands give the same output
    torch.testing.assert_close(six_band_model(torch.cat([x, x], dim=1)), rgb_model(x), rtol=1e-4, atol=1e-4)
    assert adapt_stem(prompt, 3) is prompt
    with pytest.raises(GeosaneError, match="must be positive"):
        adapt_stem(prompt, 0)


def test_batchnorm_recalibration_changes_running_stats_but_not_weights() -> None:
    model = resolve("timm:resnet18", random_init=True).build().eval()  # single-conv stem before bn1
    weights = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    before = model.bn1.running_mean.clone()
    images = torch.randn(16, 3, 32, 32) * 3 + 1
    seen = recalibrate_batchnorm(model, [images[:8], images[8:]])
    assert seen == 16 and not model.training  # mode restored
    assert not torch.allclose(model.bn1.running_mean, before)
    # cumulative average over both batches == statistics of the first BN input over all 16 images
    stem_out = model.conv1(images)
    torch.testing.assert_close(model.bn1.running_mean, stem_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert model.bn1.momentum == 0.1
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_kde_noise_is_independent_per_token_and_candidate() -> None:
    anchors = torch.zeros(1, 50, 4)
    anchors[0, :, 0] = torch.linspace(-1, 1, 50)
    g = torch.Generator().manual_seed(0)
    samples = sample_latents(anchors, num_samples=3, bandwidth=0.5, generator=g)
    noise = samples - anchors
    assert samples.shape == (3, 50, 4)
    # the reference's defect: the same noise vector on every token; here tokens and candidates differ
    assert not torch.allclose(noise[0, 0], noise[0, 1]) and not torch.allclose(noise[0], noise[1])
    assert torch.equal(sample_latents(anchors, 2, bandwidth=0.0), anchors.expand(2, -1, -1))


def test_kde_anchor_choice_per_token_or_joint() -> None:
    anchors = torch.stack([torch.zeros(200, 2), torch.full((200, 2), 10.0)])
    g = torch.Generator().manual_seed(1)
    token = sample_latents(anchors, 4, bandwidth=0.0, mode="token", generator=g)
    joint = sample_latents(anchors, 4, bandwidth=0.0, mode="joint", generator=g)
    token_from_second = (token[..., 0] == 10.0).float().mean(dim=1)
    assert ((token_from_second > 0.3) & (token_from_second < 0.7)).all()  # mixes anchors across tokens
    joint_from_second = (joint[..., 0] == 10.0).float().mean(dim=1)
    assert set(joint_from_second.tolist()) <= {0.0, 1.0}  # one anchor per candidate


def test_proxies_separate_signal_from_noise() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    signal = torch.nn.functional.one_hot(labels, 3).float() * 5 + torch.randn(60, 3, generator=g) * 0.3
    noise = torch.randn(60, 16, generator=g)
    assert knn_accuracy(signal, labels) == 1.0 and linear_probe_accuracy(signal, labels) == 1.0
    assert knn_accuracy(noise, labels) < 0.6 and linear_probe_accuracy(noise, labels) < 0.6
