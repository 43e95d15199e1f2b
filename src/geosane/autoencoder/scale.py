"""``geosane bench scale``: a multi-billion-parameter zoo through tokenize and window streaming.

Builds a synthetic zoo of large, randomly initialised timm models (no download, so the figures
depend on sizes, not on which checkpoints one has), then per model measures, each phase in a fresh
spawned process so that its peak RSS is its own:

- **add**: build the model and write it into the zoo (safetensors);
- **copy**: a plain ``shutil.copyfile`` of that zoo file, the I/O baseline;
- **tokenize**: ``tokenize_zoo`` of the store so far (only the new model is tokenized);
- **stream**: ``N`` random training windows drawn from the whole store so far, as the autoencoder's
  data loader draws them (memory-mapped reads), in windows/s;
- **verify**: a SHA-256 pass over the whole store (what checking every file on read costs once).

Results are appended to ``OUT/scale.json`` after every model (a rerun skips finished models),
then ``report.md`` and ``scale.png`` are written. The paper-preset autoencoder's consumption rate is
estimated from its FLOPs per training window, counted with ``torch.utils.flop_counter`` on the meta
device (no memory), and an assumed H100 throughput; both numbers are in the report.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from geosane.io import claim_out_dir, read_json, write_json, write_text

__all__ = ["DEFAULT_SCALE_MODELS", "H100_BF16_FLOPS", "bench_scale", "paper_window_flops"]

# ~3.2B parameters in all: ViT-H/L, BEiT-L, Swin-L/B, ConvNeXt-XL/L, VGG-19, RegNetY-32GF,
# Wide-ResNet-101, EfficientNet-B7, ResNet-152, DeiT-III-L, EVA-02-L (the first twelve largest
# first, so peak memory is seen early)
DEFAULT_SCALE_MODELS = (
    "vit_huge_patch14_224",
    "convnext_xlarge",
    "vit_large_patch16_224",
    "beit_large_patch16_224",
    "convnext_large",
    "swin_large_patch4_window7_224",
    "regnety_320",
    "vgg19",
    "wide_resnet101_2",
    "swin_base_patch4_window7_224",
    "efficientnet_b7",
    "resnet152",
    "deit3_large_patch16_224",
    "eva02_large_patch14_224",
)
H100_BF16_FLOPS = 989e12  # H100 SXM dense bf16 tensor-core peak (NVIDIA datasheet)
ASSUMED_MFU = 0.4  # a typical model-FLOPs utilisation for a well-fed transformer of this size


def _add(zoo_dir: str, name: str) -> dict[str, Any]:
    import timm
    import torch

    from geosane.tokens.bench import reset_peak_rss, rss_bytes
    from geosane.zoo import ArchSpec, LoadedModel, Zoo

    torch.manual_seed(0)
    reset_peak_rss()
    start = time.perf_counter()
    model = timm.create_model(name, pretrained=False)
    state = model.state_dict()
    zoo = Zoo.create(zoo_dir)
    entry, _ = zoo.add(LoadedModel(f"timm:{name}", state, ArchSpec("timm", name, {})), model_id=name)
    return {
        "params": sum(t.numel() for t in state.values()),
        "model_bytes": zoo.weights_path(entry).stat().st_size,
        "add_s": time.perf_counter() - start,
        "add_peak_rss": rss_bytes("VmHWM"),
    }


def _tokenize(zoo_dir: str, store_dir: str) -> dict[str, Any]:
    from geosane.tokens.bench import reset_peak_rss, rss_bytes
    from geosane.tokens.store import tokenize_zoo

    reset_peak_rss()  # after the imports: the figure is the tokenizer's, not torch's
    base = rss_bytes("VmHWM") or 0
    start = time.perf_counter()
    tokenize_zoo(zoo_dir, store_dir, verify=False)
    return {"tokenize_s": time.perf_counter() - start, "tokenize_peak_rss": rss_bytes("VmHWM"),
            "tokenize_base_rss": base}  # fmt: skip


def _stream(store_dir: str, windows: int, window: int) -> dict[str, Any]:
    from geosane.tokens.bench import reset_peak_rss, rss_bytes
    from geosane.tokens.store import TokenStore
    from geosane.tokens.windows import WindowDataset

    store = TokenStore(store_dir, check_hashes=False)
    data = WindowDataset(store, window, sampling="tokens", num_samples=windows)
    data[0]
    reset_peak_rss()
    start = time.perf_counter()
    for i in range(len(data)):
        data[i]
    seconds = time.perf_counter() - start
    return {"windows_per_s": windows / seconds, "stream_peak_rss": rss_bytes("VmHWM"),
            "stream_anon_rss": rss_bytes("RssAnon"), "store_models": len(store),
            "store_tokens": store.total_tokens}  # fmt: skip


def _in_fresh_process(fn: Any, *args: Any) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def paper_window_flops() -> dict[str, float]:
    """Training FLOPs per window of the paper preset (forward + backward, both contrastive views)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from geosane.autoencoder.config import load_autoencoder_config
    from geosane.autoencoder.model import WeightAutoencoder

    cfg = load_autoencoder_config("paper", [])
    m = cfg.model
    with torch.device("meta"):
        model = WeightAutoencoder(m)
        views = 2
        tokens = torch.randn(views, m.window, model.token_size)
        positions = torch.zeros(views, m.window, 3, dtype=torch.long)
        layer_type = torch.zeros(views, m.window, dtype=torch.long)
        valid = torch.ones(views, m.window, dtype=torch.bool)
        counter = FlopCounterMode(display=False)
        with counter:
            recon, z = model(tokens, positions, layer_type, valid)
            (recon.float().sum() + model.project(z, valid).float().sum()).backward()
    params = sum(p.numel() for p in model.parameters())
    return {"flops_per_window": counter.get_total_flops() / 1.0, "params": float(params), "window": float(m.window)}


def bench_scale(
    out: str | os.PathLike[str],
    models: Sequence[str] = DEFAULT_SCALE_MODELS,
    windows: int = 2000,
    window: int = 256,
    keep: bool = False,
) -> dict[str, Any]:
    """Run the scale benchmark into ``out`` (resumable); returns the results written to ``scale.json``."""
    from geosane.console import console

    out = Path(out).expanduser()
    claim_out_dir(out, "bench scale")
    zoo_dir, store_dir = out / "zoo", out / "store"
    results_path = out / "scale.json"
    rows: list[dict[str, Any]] = read_json(results_path)["models"] if results_path.is_file() else []
    done = {r["name"] for r in rows}
    for name in models:
        if name in done:
            continue
        console.print(f"[bold]{name}[/]: build + add", highlight=False)
        row: dict[str, Any] = {"name": name, **_in_fresh_process(_add, str(zoo_dir), name)}
        source = zoo_dir / "models" / f"{name}.safetensors"
        copy = out / ".copy.safetensors"
        start = time.perf_counter()
        shutil.copyfile(source, copy)
        os.sync()
        row["copy_s"] = time.perf_counter() - start
        copy.unlink()
        console.print(f"  tokenize ({row['params'] / 1e6:,.1f}M parameters)", highlight=False)
        row.update(_in_fresh_process(_tokenize, str(zoo_dir), str(store_dir)))
        row["token_file_bytes"] = (store_dir / "tokens" / f"{name}.safetensors").stat().st_size
        row["store_bytes"] = _dir_bytes(store_dir)
        row["zoo_bytes"] = _dir_bytes(zoo_dir)
        console.print(f"  stream {windows} windows of {window}", highlight=False)
        row.update(_in_fresh_process(_stream, str(store_dir), windows, window))
        from geosane.io import sha256_file

        start = time.perf_counter()
        for f in sorted((store_dir / "tokens").glob("*.safetensors")):
            sha256_file(f)
        row["verify_s"] = time.perf_counter() - start
        rows.append(row)
        write_json(results_path, {"models": rows})
    estimate = paper_window_flops()
    result = {"models": rows, "paper": estimate, "h100_bf16_flops": H100_BF16_FLOPS, "assumed_mfu": ASSUMED_MFU}
    write_json(results_path, result)
    write_text(out / "report.md", scale_report(result))
    _plot(result, out / "scale.png")
    if not keep:
        shutil.rmtree(zoo_dir, ignore_errors=True)
        shutil.rmtree(store_dir, ignore_errors=True)
    return result


def scale_report(result: dict[str, Any]) -> str:
    """Markdown tables of the measured figures and the paper-preset consumption estimate."""
    rows = result["models"]
    gb = 1e9
    lines = [
        "# geosane bench scale", "",
        "| model | params (M) | model GB | store GB (cum.) | tokenize GB/s | copy GB/s | tokenize/copy | "
        "token file / model | tokenize peak RSS over start GB | stream windows/s | stream anon RSS GB | "
        "stream peak RSS incl. mapped file pages GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        tok = r["model_bytes"] / r["tokenize_s"] / gb
        cp = r["model_bytes"] / r["copy_s"] / gb
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:,.1f} | {r['model_bytes'] / gb:.2f} | {r['store_bytes'] / gb:.2f} | "
            f"{tok:.3f} | {cp:.3f} | {tok / cp:.3f} | {r['token_file_bytes'] / r['model_bytes']:.3f} | "
            f"{(r['tokenize_peak_rss'] - r['tokenize_base_rss']) / gb:.2f} | {r['windows_per_s']:,.0f} | "
            f"{r['stream_anon_rss'] / gb:.2f} | {r['stream_peak_rss'] / gb:.2f} |"
        )
    total_params = sum(r["params"] for r in rows)
    total_model = sum(r["model_bytes"] for r in rows)
    total_tok_s = sum(r["tokenize_s"] for r in rows)
    total_copy_s = sum(r["copy_s"] for r in rows)
    last = rows[-1] if rows else None
    paper = result["paper"]
    per_window = paper["flops_per_window"]
    rate = result["h100_bf16_flops"] * result["assumed_mfu"] / per_window
    lines += ["", f"Total: {total_params / 1e9:.2f}B parameters, {total_model / gb:.1f} GB of fp32 weights."]
    if last:
        lines += [
            f"Tokenize: {total_model / total_tok_s / gb:.3f} GB/s overall vs plain copy {total_model / total_copy_s / gb:.3f} "
            f"GB/s (ratio {total_copy_s / total_tok_s:.3f}). Store {last['store_bytes'] / gb:.1f} GB = "
            f"{last['store_bytes'] / total_model:.3f} x the model bytes.",
            f"Streaming from the full store ({last['store_models']} models, {last['store_tokens']:,} tokens): "
            f"{last['windows_per_s']:,.0f} windows/s of 256 tokens on one process. Its own (anonymous) memory "
            f"stays at {last['stream_anon_rss'] / gb:.2f} GB (first model: {rows[0]['stream_anon_rss'] / gb:.2f} GB); "
            f"the peak RSS of {last['stream_peak_rss'] / gb:.2f} GB also counts the memory-mapped token pages "
            "the windows touched, which are the kernel's reclaimable page cache, not the process's memory.",
            f"Tokenize streams model by model: its peak RSS above the interpreter is "
            f"{max(r['tokenize_peak_rss'] - r['tokenize_base_rss'] for r in rows) / gb:.2f} GB for the largest model "
            f"({max(r['model_bytes'] for r in rows) / gb:.2f} GB), whatever the store's size.",
            f"Verifying every token file's SHA-256 once: {last['verify_s']:.0f} s for {last['store_bytes'] / gb:.1f} GB.",
        ]
    lines += [
        "",
        f"Paper preset ({paper['params'] / 1e6:,.0f}M parameters, window {int(paper['window'])}): "
        f"{per_window / 1e12:.2f} TFLOP per training window (two views, forward + backward; "
        "torch.utils.flop_counter on the meta device).",
        f"One H100 (bf16 dense peak {result['h100_bf16_flops'] / 1e12:.0f} TFLOP/s, assumed MFU "
        f"{result['assumed_mfu']:.0%}) consumes about {rate:,.0f} windows/s"
        + (f"; one CPU streaming process supplies {last['windows_per_s'] / rate:.1f}x that." if last else "."),
        "",
    ]
    return "\n".join(lines)


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geosane.io import atomic_path

    rows = result["models"]
    store_gb = [r["store_bytes"] / 1e9 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(store_gb, [r["stream_anon_rss"] / 1e9 for r in rows], "o-", label="stream: own (anonymous) memory")
    a.plot(store_gb, [r["stream_peak_rss"] / 1e9 for r in rows], "^:", label="stream: peak RSS incl. mapped pages")
    a.plot(store_gb, [r["tokenize_peak_rss"] / 1e9 for r in rows], "s-", label="tokenize peak RSS")
    a.set_xlabel("token store size (GB)")
    a.set_ylabel("GB")
    a.set_title("memory as the store grows")
    a.legend()
    rate = result["h100_bf16_flops"] * result["assumed_mfu"] / result["paper"]["flops_per_window"]
    b.plot(store_gb, [r["windows_per_s"] for r in rows], "o-", label="one streaming process")
    b.axhline(rate, color="k", ls="--", label="paper preset on one H100 (est.)")
    b.set_xlabel("token store size (GB)")
    b.set_ylabel("windows/s (256 tokens)")
    b.set_yscale("log")
    b.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
