"""Benchmarks that run several stages together (``geosane bench foundry``).

Stage packages register their own throughput benchmarks under ``geosane bench``; this package
holds the ones that span the foundry: a zoo, its autoencoder, generation and the controls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

if TYPE_CHECKING:
    from geosane.benchmark.foundry import (
        FoundryBenchConfig,
        FoundryResult,
        load_bench_config,
        run_foundry_bench,
    )

__all__ = ["FoundryBenchConfig", "FoundryResult", "load_bench_config", "run_foundry_bench"]

__getattr__, __dir__ = lazy_exports(
    __name__, {"foundry": ("FoundryBenchConfig", "FoundryResult", "load_bench_config", "run_foundry_bench")}
)
