"""``geosane bench train``: training throughput (tokens/s) and peak memory of the autoencoder.

One training step = both views through the autoencoder, the full loss (reconstruction + NT-Xent),
backward, gradient clipping and the AdamW step, on synthetic windows of the configured ``window``
and ``batch_size`` (the token values do not change the cost). ``tokens_per_s`` counts window
tokens (``batch_size * window`` per step; each is processed once per view). Steps are timed after
``warmup`` untimed ones (compilation happens there); the median step time is reported, and the
median time of its optimizer part (clipping + AdamW, where the AdamW implementation matters).
``peak_rss_bytes`` is the process's peak resident set (``VmHWM``) over the timed steps, reset
before them on Linux; on CUDA ``peak_cuda_bytes`` is the allocator's peak.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from contextlib import nullcontext
from typing import Any

import torch

from geosane.autoencoder.config import AutoencoderConfig
from geosane.autoencoder.module import AutoencoderModule, make_optimizer
from geosane.config import to_dict
from geosane.runs import keeps_torch_threads
from geosane.tokens.bench import reset_peak_rss, rss_bytes
from geosane.tokens.settings import DEFAULT_TOKEN_SIZE

__all__ = ["benchmark_training", "synthetic_batch"]


def synthetic_batch(config: AutoencoderConfig, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch in the window item format with realistic positions (layers of ~100 tokens)."""
    generator = torch.Generator().manual_seed(seed)
    batch, window = config.data.batch_size, config.model.window
    d_t = config.model.d_t or DEFAULT_TOKEN_SIZE  # no store here: the tokenizer's default unless set
    start = torch.randint(0, 10_000, (batch, 1), generator=generator)
    n = start + torch.arange(window)
    out = {
        "tokens": torch.randn(batch, window, d_t, generator=generator) * 0.05,
        "mask": torch.ones(batch, window, d_t, dtype=torch.bool),
        "positions": torch.stack([n, n // 100, n % 100], dim=-1),
        "layer_type": (n // 100) % 9,
        "valid": torch.ones(batch, window, dtype=torch.bool),
        "sample": torch.arange(batch) + 1,
    }
    return {k: v.to(device) for k, v in out.items()}


@keeps_torch_threads
def benchmark_training(
    config: AutoencoderConfig, steps: int = 10, warmup: int = 3, device: str | None = None
) -> dict[str, Any]:
    """Measure training steps of ``config``'s autoencoder (see module docstring)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if config.model.d_t is None:  # no store: the tokenizer's default token size, recorded as used
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, d_t=DEFAULT_TOKEN_SIZE))
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.train.seed)
    module = AutoencoderModule(config).to(dev)
    module.train()
    optimizer, scheduler = make_optimizer(module.model, config)
    batch = synthetic_batch(config, dev)
    precision = config.train.precision
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype is not None else nullcontext()

    def now() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def step() -> tuple[float, float]:
        """Seconds of the whole step and of its optimizer part (clipping + AdamW)."""
        started = now()
        with autocast:
            loss = module.compute_loss(batch)["loss"]
        loss.backward()
        backward_done = now()
        if config.train.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(module.model.parameters(), config.train.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        finished = now()
        return finished - started, finished - backward_done

    for _ in range(warmup):
        step()
    reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(steps)]
    seconds = statistics.median(t for t, _ in times)
    tokens = config.data.batch_size * config.model.window
    result: dict[str, Any] = {
        "tokens_per_s": tokens / seconds,
        "step_seconds": seconds,
        "optimizer_seconds": statistics.median(o for _, o in times),
        "peak_rss_bytes": rss_bytes("VmHWM"),
        "parameters": module.model.num_parameters(),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "views": 2 if config.loss.gamma > 0 or config.loss.permutation_variants > 0 else 1,
        "config": {
            "model": to_dict(config.model),
            "batch_size": config.data.batch_size,
            "precision": precision,
            "compile": config.train.compile,
            "fused_optimizer": config.train.fused_optimizer,
            "attention": config.model.attention,
        },
    }
    del scheduler
    if dev.type == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return result
