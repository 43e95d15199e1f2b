"""GW / LW / MoE fusers: shapes, weights that sum to 1, top-k routing, load balancing, warm-up counter."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from geosane.config import from_dict
from geosane.difuser import (
    BottleneckProjector,
    ClassificationHead,
    DifuserModel,
    DifuserModule,
    FuserConfig,
    GWFuser,
    LayerInfo,
    LWFuser,
    MoEFuser,
    StreamLayout,
    build_fuser,
    feature_key,
)
from geosane.errors import ConfigError
from geosane.runs import SafeCheckpointIO
from geosane.tasks import FitConfig

TIMESTEPS = (1, 21, 41)
LAYERS = [
    LayerInfo("up0_res0", "up_blocks.0.resnets.0.conv2", "res", 0, 16, (4, 4)),
    LayerInfo("up0_attn0", "up_blocks.0.attentions.0", "attn", 0, 16, (4, 4)),
    LayerInfo("up1_res0", "up_blocks.1.resnets.0.conv2", "res", 1, 8, (8, 8)),
]


def layout(group: str = "scale") -> StreamLayout:
    return StreamLayout.from_layers(LAYERS, TIMESTEPS, group)


def features(batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        feature_key(t, info.name): torch.randn(batch, info.channels, *info.size, generator=g)
        for t in TIMESTEPS
        for info in LAYERS
    }


def streams(lay: StreamLayout, batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    return lay.assemble(features(batch, seed))


def test_layout_groups_layers_by_scale_finest_first() -> None:
    lay = layout()
    assert lay.sizes == ((8, 8), (4, 4))
    assert [(g.name, g.layers, g.channels, g.scale) for g in lay.groups] == [
        ("8x8", ("up1_res0",), 8, 0),
        ("4x4", ("up0_res0", "up0_attn0"), 32, 1),
    ]
    assert [s.shape[1] for s in streams(lay)] == [8, 32] * 3
    assert len(layout("layer").groups) == 3


def test_projector_is_a_groupnorm_bottleneck() -> None:
    proj = BottleneckProjector(32, 384)
    convs = [m for m in proj.body if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert [c.out_channels for c in convs] == [96, 96, 384]
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in proj.modules()) == 4
    assert proj(torch.randn(2, 32, 5, 5)).shape == (2, 384, 5, 5)


def test_gw_single_softmax_over_all_streams() -> None:
    fuser = GWFuser(layout(), width=16)
    with torch.no_grad():
        fuser.logits.copy_(torch.randn_like(fuser.logits))
    weights = fuser.weights()
    assert weights.shape == (3, 2)
    assert torch.isclose(weights.sum(), torch.tensor(1.0))
    outs = fuser(streams(fuser.layout))
    assert [tuple(o.shape) for o in outs] == [(4, 16, 8, 8), (4, 16, 4, 4)]
    # the output of a scale is exactly the weighted sum of that scale's projected streams
    projected = fuser.project(streams(fuser.layout))
    expected = sum(weights[t, 1] * projected[2 * t + 1] for t in range(3))
    assert torch.allclose(outs[1], expected, atol=1e-5)
    outs[0].sum().backward()
    assert fuser.logits.grad is not None and fuser.logits.grad.abs().sum() > 0


def test_lw_per_pixel_weights_sum_to_one_per_scale() -> None:
    fuser = LWFuser(layout("layer"), width=16)
    outs = fuser(streams(fuser.layout))
    assert [tuple(o.shape) for o in outs] == [(4, 16, 8, 8), (4, 16, 4, 4)]
    w_fine, w_coarse = fuser.last_weights
    assert w_fine.shape == (4, 3, 8, 8)  # 3 timesteps x 1 layer at 8x8
    assert w_coarse.shape == (4, 6, 4, 4)  # 3 timesteps x 2 layers at 4x4
    for w in fuser.last_weights:
        assert torch.allclose(w.sum(dim=1), torch.ones_like(w[:, 0]), atol=1e-6)
        assert w.std() > 0  # weights vary per pixel / image
    fuser.eval()
    fuser.reset_statistics()
    fuser(streams(fuser.layout))
    summary = fuser.summary()
    heat = torch.tensor(summary["heatmap"])  # [timesteps, groups]; a scale's entries sum to 1
    assert heat.shape == (3, 3)
    assert torch.isclose(heat[:, 0].sum(), torch.tensor(1.0, dtype=heat.dtype), atol=1e-5)
    assert torch.isclose(heat[:, 1:].sum(), torch.tensor(1.0, dtype=heat.dtype), atol=1e-5)


VARIANTS = pytest.mark.parametrize("variant", ["reference", "projected"])


def moe(variant: str = "reference", **kw: object) -> MoEFuser:
    args = {
        "width": 16,
        "num_experts": 4,
        "top_k": 2,
        "warmup_steps": 0,
        "balance_weight": 0.1,
        "variant": variant,
    }
    args.update(kw)
    return MoEFuser(layout(), **args)  # type: ignore[arg-type]


@VARIANTS
def test_moe_topk_routing_after_warmup(variant: str) -> None:
    torch.manual_seed(0)
    fuser = moe(variant)
    x = fuser.project(streams(fuser.layout, batch=6))[1]  # coarse scale, t=1
    probs, combine, top_idx = fuser.route(1, x)
    assert ((combine > 0).sum(dim=1) == 2).all()
    assert torch.allclose(combine.sum(dim=1), torch.ones(6), atol=1e-6)
    assert torch.equal(
        (combine > 0).nonzero()[:, 1].view(6, 2).sort(dim=1).values, top_idx.sort(dim=1).values
    )
    # experts kept are the two most probable ones, renormalised
    expected = probs.gather(1, top_idx) / probs.gather(1, top_idx).sum(dim=1, keepdim=True)
    assert torch.allclose(combine.gather(1, top_idx), expected)
    outs = fuser(streams(fuser.layout, batch=6))
    assert [tuple(o.shape) for o in outs] == [(6, 16, 8, 8), (6, 16, 4, 4)]
    # an expert that no image is routed to does not change the output
    unused = sorted(set(range(4)) - set(top_idx.flatten().tolist()))
    if unused:
        before = fuser._mix(1, x, combine)
        with torch.no_grad():
            for p in fuser.experts[1][unused[0]].parameters():
                p.add_(1.0)
        assert torch.allclose(before, fuser._mix(1, x, combine))


@VARIANTS
def test_moe_dense_during_warmup_then_sparse(variant: str) -> None:
    fuser = moe(variant, warmup_steps=3)
    x = fuser.project(streams(fuser.layout))[0]
    assert fuser.dense and ((fuser.route(0, x)[1] > 0).sum(dim=1) == 4).all()
    for _ in range(3):
        fuser.count_optimizer_step()
    assert not fuser.dense and ((fuser.route(0, x)[1] > 0).sum(dim=1) == 2).all()


@VARIANTS
def test_moe_load_balancing_term_changes_the_gradient(variant: str) -> None:
    def gate_grad(weight: float) -> tuple[torch.Tensor, float]:
        torch.manual_seed(0)
        fuser = moe(variant, balance_weight=weight)
        head = ClassificationHead(16, 3)
        model = DifuserModel(fuser, head)
        logits = model(features(batch=8))
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(8) % 3) + model.aux_loss()
        loss.backward()
        return fuser.gates[0].weight.grad.clone(), float(model.aux_loss().detach())

    g0, aux0 = gate_grad(0.0)
    g1, aux1 = gate_grad(0.5)
    assert aux0 == 0.0 and aux1 > 0.0
    assert not torch.allclose(g0, g1)


@VARIANTS
def test_training_step_adds_the_load_balancing_loss(variant: str) -> None:
    """The reference computed this term and dropped it; here the loss the optimizer sees includes it."""

    def step(weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = DifuserModel(moe(variant, balance_weight=weight), ClassificationHead(16, 3))
        module = DifuserModule(model, "classification", 3, FitConfig())
        batch = features(batch=8)
        loss = module.training_step((batch, torch.arange(8) % 3), 0)
        task_loss = torch.nn.functional.cross_entropy(model(batch), torch.arange(8) % 3)
        loss.backward()
        return (
            loss.detach(),
            task_loss.detach() + model.aux_loss().detach(),
            model.fuser.gates[1].weight.grad.clone(),
        )

    loss0, expected0, grad0 = step(0.0)
    loss1, expected1, grad1 = step(0.5)
    assert torch.isclose(loss0, expected0) and torch.isclose(loss1, expected1)
    assert loss1 > loss0  # same weights and data: the difference is the balance term
    assert not torch.allclose(grad0, grad1)


def test_reference_variant_is_shaped_like_satdifuser() -> None:
    """No per-stream projectors; per scale a gate and bottleneck-projector experts on the raw features."""
    ref, proj = moe("reference"), moe("projected")
    assert len(ref.projectors) == 0 and len(proj.projectors) == 6  # 3 timesteps x 2 groups
    for s, raw in enumerate((8, 32)):  # 8x8: up1_res0 (8 ch); 4x4: up0_res0 + up0_attn0 (16 + 16)
        assert ref.gates[s].in_channels == raw and ref.gates[s].kernel_size == (3, 3)
        experts = list(ref.experts[s])
        assert len(experts) == 4 and all(isinstance(e, BottleneckProjector) for e in experts)
        assert experts[0].body[0].in_channels == raw and experts[0].body[0].out_channels == 16 // 4
        assert proj.gates[s].in_channels == 16  # one projected group of width 16 per scale
    assert ref.balance_loss == "usage_kl" and proj.balance_loss == "switch"
    assert moe("projected", balance_loss="usage_kl").balance_loss == "usage_kl"
    outs = ref(streams(ref.layout, batch=3))
    assert [tuple(o.shape) for o in outs] == [(3, 16, 8, 8), (3, 16, 4, 4)]
    cfg = from_dict(FuserConfig, {"name": "moe", "width": 16, "num_experts": 4})
    assert cfg.moe_variant == "reference" and build_fuser(cfg, layout()).variant == "reference"
    with pytest.raises(ConfigError, match="expected one of reference, projected"):
        from_dict(FuserConfig, {"moe_variant": "switch"})


def test_usage_kl_balance_is_zero_when_balanced_and_positive_when_collapsed() -> None:
    fuser = moe("reference", balance_weight=1.0)
    uniform = torch.full((5, 4), 0.25)
    top = uniform.topk(2, dim=1).indices
    assert float(fuser._balance_loss(uniform, top)) == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 5)
    usage = collapsed.mean(dim=0)
    expected = float((usage * torch.log(usage * 4)).sum())  # KL(usage || uniform)
    assert float(fuser._balance_loss(collapsed, top)) == pytest.approx(expected, rel=1e-5) and expected > 1.0
    # the loss of a forward pass is the weighted mean over (scale, timestep)
    with torch.no_grad():
        for gate in fuser.gates:
            gate.weight.zero_()
            gate.bias.zero_()
    fuser(streams(fuser.layout))
    assert float(fuser.aux_loss().detach()) == pytest.approx(
        0.0, abs=1e-6
    )  # zero gates: uniform probabilities


def test_top_k_larger_than_experts_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"top_k \(9\) is larger than fuser.num_experts \(8\)"):
        from_dict(FuserConfig, {"name": "moe", "num_experts": 8, "top_k": 9})
    with pytest.raises(ConfigError, match="larger than"):
        moe(num_experts=2, top_k=3)
    assert isinstance(build_fuser(from_dict(FuserConfig, {"name": "lw", "width": 8}), layout()), LWFuser)


class _Features(Dataset):
    def __init__(self, n: int) -> None:
        self.items = [features(1, seed=i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return {k: v[0] for k, v in self.items[i].items()}, torch.tensor(i % 3)


def _trainer(max_epochs: int, ckpt_dir: Path) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint

    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)],
        plugins=[SafeCheckpointIO()],
    )


@VARIANTS
def test_moe_warmup_counts_optimizer_steps_and_survives_resume(variant: str, tmp_path: Path) -> None:
    data = DataLoader(_Features(8), batch_size=4)
    config = FitConfig(epochs=2, batch_size=4, lr=1e-3, warmup_epochs=0.0)

    def module() -> DifuserModule:
        torch.manual_seed(0)
        return DifuserModule(
            DifuserModel(moe(variant, warmup_steps=5), ClassificationHead(16, 3)), "classification", 3, config
        )

    first = module()
    _trainer(2, tmp_path).fit(first, data, data)  # 2 epochs x 2 batches, plus 2 validation passes
    assert int(first.model.fuser.optimizer_steps) == 4
    assert "model.fuser.optimizer_steps" in first.state_dict()
    first.eval()
    with torch.no_grad():
        for batch, _ in data:
            first.model(batch)
    assert int(first.model.fuser.optimizer_steps) == 4  # eval passes do not count

    resumed = module()
    config.epochs = 3
    _trainer(3, tmp_path).fit(resumed, data, data, ckpt_path=str(tmp_path / "last.ckpt"), weights_only=True)
    assert int(resumed.model.fuser.optimizer_steps) == 6  # continued from 4, not restarted
    assert not resumed.model.fuser.dense
