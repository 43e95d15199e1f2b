"""``geosane bench tokenizer``: tokenizer throughput against a plain memory copy, and peak memory.

What is measured, in one process:

- ``seconds``: the best of ``repeats`` timed :func:`~geosane.tokens.tokenize` calls (wall clock).
- ``memcpy_bytes_per_s``: the best of ``repeats`` plain copies of the same tensors' bytes into one
  freshly allocated buffer (``torch.empty``, like the tokenizer's output, so both pay the same
  first-touch page faults); ``ratio`` = tokenizer bytes/s / memcpy bytes/s. Bytes are the state dict's
  bytes (``numel * element_size`` over all tensors).
- ``peak_rss_bytes``: the kernel's peak resident set size (``VmHWM``) during a tokenize call,
  reset just before it through ``/proc/self/clear_refs``; ``baseline_rss_bytes`` is the resident
  set with the model loaded, just before that call (the repeat with the largest difference is
  reported), and
  ``rss_over_model`` = (peak - baseline) / model bytes: the tokenizer's own memory in units of the
  model's size. ``interpreter_rss_bytes`` (before the model was loaded) is reported for reference.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from geosane.tokens.tokenizer import tokenize

__all__ = ["benchmark_tokenizer", "reset_peak_rss", "rss_bytes"]

_STATUS = Path("/proc/self/status")


def rss_bytes(field: str = "VmRSS") -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes, or None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _memcpy(state_dict: Mapping[str, torch.Tensor], total_bytes: int) -> torch.Tensor:
    out = torch.empty(total_bytes, dtype=torch.uint8)
    offset = 0
    for tensor in state_dict.values():
        flat = tensor.detach().contiguous().reshape(-1)
        size = flat.numel() * flat.element_size()
        if size:
            out[offset : offset + size].copy_(flat.view(torch.uint8))
        offset += size
    return out


def benchmark_tokenizer(
    state_dict: Mapping[str, torch.Tensor],
    token_size: int = 230,
    mode: str = "dense",
    repeats: int = 3,
    interpreter_rss: int | None = None,
) -> dict[str, Any]:
    """Time ``tokenize`` and a plain copy of ``state_dict``; see the module docstring for the fields."""
    model_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    params = sum(t.numel() for t in state_dict.values())
    copy_times, token_times, peaks, baselines = [], [], [], []
    num_tokens = 0
    peak_exact = True
    for _ in range(max(1, repeats)):
        gc.collect()
        start = time.perf_counter()
        copied = _memcpy(state_dict, model_bytes)
        copy_times.append(time.perf_counter() - start)
        del copied
        gc.collect()
        baselines.append(rss_bytes() or 0)
        peak_exact = reset_peak_rss() and peak_exact
        start = time.perf_counter()
        tm = tokenize(state_dict, token_size, mode)  # type: ignore[arg-type]
        token_times.append(time.perf_counter() - start)
        peaks.append(rss_bytes("VmHWM") or 0)
        num_tokens = tm.num_tokens
        del tm
    seconds, copy_seconds = min(token_times), min(copy_times)
    worst = max(range(len(peaks)), key=lambda i: peaks[i] - baselines[i])
    peak, baseline = peaks[worst], baselines[worst]
    return {
        "params": params,
        "seconds": seconds,
        "bytes_per_s": model_bytes / seconds,
        "memcpy_bytes_per_s": model_bytes / copy_seconds,
        "ratio": copy_seconds / seconds,
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
        "interpreter_rss_bytes": interpreter_rss,
        "model_bytes": model_bytes,
        "rss_over_model": (peak - baseline) / model_bytes if model_bytes else None,
        "peak_rss_exact": peak_exact,
        "num_tokens": num_tokens,
        "token_size": token_size,
        "mode": mode,
        "repeats": len(token_times),
        "threads": torch.get_num_threads(),
    }
