"""Training: schedule, accumulation, exact resume, fine-tuning, and bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from geosane.autoencoder import load_autoencoder_config
from geosane.autoencoder.module import AutoencoderModule, make_optimizer
from geosane.autoencoder.training import read_metrics, resolve_strategy, train
from geosane.errors import ConfigError, GeosaneError


def _config(store: Path, out: Path, *overrides: str):
    base = [
        f"data.store={store}", f"train.out={out}", "train.progress=false", "model.window=8",
        "model.d_model=32", "model.n_heads=2", "data.batch_size=4", "train.log_every=1",
        "train.val_every=1000", "data.val_fraction=0.2",
    ]
    return load_autoencoder_config("tiny", [*base, *overrides])


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "autoencoder.safetensors"))


def _listing(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def test_logged_learning_rate_follows_one_cycle(random_store: Path, tmp_path: Path) -> None:
    cfg = _config(random_store, tmp_path / "run", "train.max_steps=12", "train.lr=0.01", "train.pct_start=0.25")
    train(cfg)
    rows = [r for r in read_metrics(tmp_path / "run") if "train/lr" in r]
    assert [int(r["step"]) for r in rows] == list(range(12))
    reference_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        reference_opt, max_lr=0.01, total_steps=12, pct_start=0.25, div_factor=25.0, final_div_factor=1e4,
        cycle_momentum=False,
    )
    expected = []
    for _ in range(12):
        expected.append(reference_opt.param_groups[0]["lr"])
        reference_opt.step()
        reference.step()
    logged = [r["train/lr"] for r in rows]
    assert logged == pytest.approx(expected, rel=1e-6)
    assert max(logged) == pytest.approx(0.01, rel=1e-6) and logged[0] < 0.001 and logged[-1] < 0.002


class _GradientRecorder(L.Callback):
    """The gradients the optimizer is about to apply, per optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []
        self.micro_batches = 0

    def on_train_batch_start(self, *args: object) -> None:
        self.micro_batches += 1

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer: object) -> None:
        grads = {n: p.grad for n, p in module.model.named_parameters() if p.grad is not None}
        self.steps.append({n: g.detach().clone() for n, g in grads.items()})


def test_gradient_accumulation_equals_one_big_batch(random_store: Path, tmp_path: Path) -> None:
    # per-token statistics and no NT-Xent/noise: the loss of 8 windows is the mean of 2 x 4 windows'
    common = ("train.max_steps=2", "loss.gamma=0", "loss.normalize=token", "loss.multiplicative_noise=0",
              "loss.additive_noise=0", "train.clip_grad_norm=null", "train.lr=0.01")
    runs = {}
    for name, batch, accumulate in [("accumulated", 4, 2), ("big", 8, 1), ("small", 4, 1)]:
        recorder = _GradientRecorder()
        cfg = _config(random_store, tmp_path / name, *common, f"data.batch_size={batch}", f"train.accumulate={accumulate}")
        assert train(cfg, callbacks=[recorder]).steps == 2
        runs[name] = recorder
    accumulated, big, small = runs["accumulated"], runs["big"], runs["small"]
    assert accumulated.micro_batches == 4 and big.micro_batches == 2 and len(accumulated.steps) == 2
    for key, grad in big.steps[0].items():  # the first step's gradients: same windows, same weights
        assert torch.allclose(accumulated.steps[0][key], grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max())), key
    # a run without accumulation (half the windows), like the reference's zeroing every micro-batch, differs
    differs = [k for k, g in big.steps[0].items() if not torch.allclose(small.steps[0][k], g, rtol=0.05)]
    assert len(differs) > len(big.steps[0]) // 2
    # after the steps the parameters agree (Adam amplifies float round-off in near-zero gradients a bit)
    a, b = _weights(tmp_path / "accumulated"), _weights(tmp_path / "big")
    assert all(torch.allclose(a[k], b[k], atol=1e-3) for k in b)


class _Crash(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError("simulated crash")


def test_resume_continues_as_if_never_stopped(random_store: Path, tmp_path: Path) -> None:
    # noise, dropout, NT-Xent and accumulation all on: every source of randomness must line up
    common = ("train.max_steps=12", "train.ckpt_every=4", "model.dropout=0.1", "train.accumulate=2", "train.lr=0.01")
    train(_config(random_store, tmp_path / "straight", *common))
    interrupted = _config(random_store, tmp_path / "interrupted", *common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(interrupted, callbacks=[_Crash(6)])  # dies after step 6; last checkpoint at step 4
    assert sorted(p.name for p in (tmp_path / "interrupted" / "checkpoints").iterdir()) == ["step-0000004.ckpt"]
    result = train(interrupted, resume=True)
    assert result.steps == 12 and result.summary["resumed_from_step"] == 4
    straight = {int(r["step"]): r["train/loss"] for r in read_metrics(tmp_path / "straight") if "train/loss" in r}
    resumed = {int(r["step"]): r["train/loss"] for r in read_metrics(tmp_path / "interrupted") if "train/loss" in r}
    assert sorted(resumed) == list(range(12))  # one row per step: the crashed steps 5-6 were replaced
    assert [resumed[s] for s in range(12)] == pytest.approx([straight[s] for s in range(12)], rel=1e-6, abs=1e-7)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "interrupted")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


class _BarReading(L.Callback):
    """Records what the Rich progress bar shows when training ends: (completed, total)."""

    def __init__(self) -> None:
        self.reading: tuple[float, float] | None = None

    def on_train_end(self, trainer: L.Trainer, *args: object) -> None:
        from lightning.pytorch.callbacks import RichProgressBar

        bar = next(c for c in trainer.callbacks if isinstance(c, RichProgressBar))  # type: ignore[attr-defined]
        task = bar.progress.tasks[bar.train_progress_bar_id]
        self.reading = (task.completed, task.total)


def test_resumed_progress_bar_counts_the_whole_run(random_store: Path, tmp_path: Path) -> None:
    # the issue: a resumed run's bar read "400/199" (batches done against batches remaining)
    common = ("train.max_steps=8", "train.ckpt_every=2", "train.accumulate=2")
    cfg = _config(random_store, tmp_path / "run", *common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=[_Crash(4)])
    bar = _BarReading()
    train(_config(random_store, tmp_path / "run", *common, "train.progress=true"), resume=True, callbacks=[bar])
    assert bar.reading == (16, 16)  # 8 steps x 2 micro-batches, counted from the start of the run


def test_fine_tune_from_a_pretrained_autoencoder(random_store: Path, tiny_zoo_store: Path, tmp_path: Path) -> None:
    train(_config(random_store, tmp_path / "pre", "train.max_steps=3"))
    pre = _weights(tmp_path / "pre")
    cfg = _config(tiny_zoo_store, tmp_path / "fine", "train.max_steps=1", "train.lr=1e-9",
                  f"train.init_from={tmp_path / 'pre' / 'autoencoder.safetensors'}")
    result = train(cfg)
    fine = _weights(tmp_path / "fine")
    assert result.summary["init_from"]
    assert all(torch.allclose(pre[k], fine[k], atol=1e-6) for k in pre)  # started from the pre-trained weights
    fresh = _config(tiny_zoo_store, tmp_path / "fresh", "train.max_steps=1", "train.lr=1e-9")
    train(fresh)
    assert not torch.allclose(_weights(tmp_path / "fresh")["encoder.input.weight"], pre["encoder.input.weight"])


class _Wrapped(torch.nn.Module):
    """Names parameters the way FSDP's wrapper does (``_fsdp_wrapped_module.<name>``)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self._fsdp_wrapped_module = inner


def test_weight_decay_groups_survive_fsdp_flattening() -> None:
    cfg = load_autoencoder_config("tiny")
    module = AutoencoderModule(cfg)
    matrices = {id(p) for p in module.model.parameters() if p.ndim >= 2}
    vectors = {id(p) for p in module.model.parameters() if p.ndim < 2}
    assert matrices and vectors
    wrapped = _Wrapped(module.model)
    for param in wrapped.parameters():  # FULL_SHARD hands the optimizer flat 1-D shards
        param.data = param.data.reshape(-1)
    optimizer, _ = make_optimizer(wrapped, cfg, module.decay)
    decayed, plain = optimizer.param_groups
    assert {id(p) for p in decayed["params"]} == matrices and decayed["weight_decay"] == cfg.train.weight_decay
    assert {id(p) for p in plain["params"]} == vectors and plain["weight_decay"] == 0.0
    by_shape, _ = make_optimizer(wrapped, cfg)  # what deciding by shape would do here: decay nothing
    assert not by_shape.param_groups[0]["params"]


def test_fsdp_strategy_shards_per_transformer_block() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from geosane.autoencoder.model import Block

    strategy = resolve_strategy("fsdp", accelerator="gpu")  # the policy only; no GPU needed to build it
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    module = AutoencoderModule(load_autoencoder_config("tiny"))
    wrapped = list(policy._run_policy(module.model, set(), {}))  # the modules FSDP would wrap
    assert wrapped and all(isinstance(m, Block) for m in wrapped)
    assert len(wrapped) == 2 * module.config.model.n_layers  # every encoder and decoder block
    assert resolve_strategy("ddp") == "ddp"


def test_fsdp_on_cpu_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"train\.strategy=fsdp needs GPUs .*train\.strategy=ddp"):
        resolve_strategy("fsdp", accelerator="cpu")


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_config_key_names_the_closest(random_store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.d_modle'.*did you mean 'model\.d_model'"):
        _config(random_store, tmp_path / "run", "model.d_modle=64")
    assert not (tmp_path / "run").exists()


def test_token_size_mismatch(random_store: Path, tmp_path: Path) -> None:
    cfg = _config(random_store, tmp_path / "run", "model.d_t=230")
    with pytest.raises(GeosaneError, match=r"token size 32 but the autoencoder expects d_t=230"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_window_larger_than_every_model(random_store: Path, tmp_path: Path) -> None:
    cfg = _config(random_store, tmp_path / "run", "model.window=1000000")
    with pytest.raises(GeosaneError, match=r"window of 1000000 tokens is larger than every model"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_resume_from_incompatible_config(random_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_config(random_store, out, "train.max_steps=2", "train.ckpt_every=1"))
    before = _listing(out)
    with pytest.raises(ConfigError, match=r"cannot resume .*model\.d_model: 32 -> 64"):
        train(_config(random_store, out, "train.max_steps=2", "model.d_model=64"), resume=True)
    with pytest.raises(GeosaneError, match="already holds a training run"):
        train(_config(random_store, out, "train.max_steps=2"))  # no --resume: never overwritten
    assert _listing(out) == before
