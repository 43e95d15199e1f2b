"""Which generation settings move the generated initialization's fine-tuning accuracy?

Reuses a finished ``geosane demo`` directory (its zoo, token store, autoencoder and the settings
it saved in ``demo.yaml``) and, per setting, runs ``geosane generate`` for the demo's zoo prompt and
``geosane compare`` with only the generated initialization under the demo's budget. Prints one JSON line per setting and writes
``OUT/sweep.json``. The table in ``docs/demo.md`` came from:

    python scripts/generation_sweep.py --demo geosane-demo --data ../shared/data/rsscn7 --out sweep
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from geosane.demo import load_demo_config
from geosane.downstream import compare, load_compare_config
from geosane.generation import generate
from geosane.generation.pipeline import config_from_kwargs

SETTINGS: dict[str, dict[str, Any]] = {
    "direct, bw 0, no anchors (reconstruction)": dict(bandwidth=0.0, anchors=0, num_candidates=1),
    "direct, bw 0.2, no anchors": dict(bandwidth=0.2, anchors=0),
    "direct, bw 0.1, 4 anchors": dict(bandwidth=0.1, anchors=4),
    "direct, bw 0.2, 4 anchors": dict(bandwidth=0.2, anchors=4),
    "direct, bw 0.5, 4 anchors": dict(bandwidth=0.5, anchors=4),
    "direct, bw 1.0, 4 anchors": dict(bandwidth=1.0, anchors=4),
    "direct, bw 0.2, 4 anchors, joint KDE": dict(bandwidth=0.2, anchors=4, kde_mode="joint"),
    "direct, bw 0.2, 4 anchors, no BN recalibration": dict(bandwidth=0.2, anchors=4, bn_batches=0),
    "direct, bw 0.2, 4 anchors, linear proxy": dict(bandwidth=0.2, anchors=4, proxy="linear"),
    "residual, bw 0.2, 4 anchors": dict(bandwidth=0.2, anchors=4, decode="residual"),
    "residual, bw 0.5, 4 anchors": dict(bandwidth=0.5, anchors=4, decode="residual"),
    "residual, bw 1.0, 4 anchors": dict(bandwidth=1.0, anchors=4, decode="residual"),
    "residual, bw 0.5, no anchors": dict(bandwidth=0.5, anchors=0, decode="residual"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished geosane demo --out directory")
    parser.add_argument("--data", type=Path, required=True, help="the image folder the demo ran on")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ae", type=Path, help="another autoencoder (default: the demo's)")
    parser.add_argument("--only", default="", help="comma-separated substrings selecting settings")
    args = parser.parse_args()
    demo = load_demo_config(args.demo / "demo.yaml")  # the prompt, image size, split and budget it used
    torch.set_num_threads(1)
    selected = {k: v for k, v in SETTINGS.items() if not args.only or any(s in k for s in args.only.split(","))}
    rows = []
    for i, (name, kwargs) in enumerate(selected.items()):
        started = time.perf_counter()
        gen = args.out / f"setting-{i}" / "generated"
        if not (gen / "model_card.json").exists():
            settings = dict(num_candidates=10, top_k=1, kde_mode="token", seed=0) | kwargs
            anchors = settings.pop("anchors")
            generate(config_from_kwargs(
                ae=args.ae or args.demo / "autoencoder", prompt=f"zoo:{args.demo / 'zoo'}#{demo.generate.prompt}",
                out=gen, select_data=args.data, image_size=demo.image_size, split_seed=demo.split_seed,
                overwrite=True, anchors=anchors,
                store=args.demo / "tokens" if anchors else None, **settings,
            ))  # fmt: skip
        result = compare(load_compare_config(demo.compare.config, {
            "data.root": str(args.data), "data.image_size": demo.image_size, "data.split_seed": demo.split_seed,
            "prompt": None, "zoo.dir": str(args.demo / "zoo"), "generated.dir": str(gen), "arch.name": "",
            **demo.compare.overrides,
            "out": str(args.out / f"setting-{i}" / "compare"), "inits": ["generated"], "generated.top_k": 1,
        }))  # fmt: skip
        summary = result.summaries[0]
        card = json.loads((gen / "model_card.json").read_text())
        rows.append({
            "setting": name, "test_mean": 100 * summary.test_mean, "test_std": 100 * summary.test_std,
            "proxy": card["candidates"][0]["proxy_score"], "prompt_proxy": card["prompt_proxy_score"],
            "seconds": time.perf_counter() - started,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
