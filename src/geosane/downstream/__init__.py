"""Downstream evaluation: fine-tune initializations on remote-sensing tasks and compare them.

- :func:`finetune`: one initialization (scratch, any model source, a generated candidate) on one
  task; metrics JSON, per-epoch history CSV, fine-tuned safetensors; resumable.
- :func:`compare` / :func:`run_compare` (config file or preset + overrides): scratch / prompt /
  zoo average / TIES / DARE / generated top-k under one budget and several seeds; results.csv,
  report.md, PNG plots; resumable; per-run wall time recorded.
- :mod:`geosane.downstream.merges`: :func:`average_merge`, :func:`ties_merge`, :func:`dare_merge`.
- :func:`load_task_data`: image folders, csmask scene chips, TorchGeo benchmarks, split into
  train / selection / test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

if TYPE_CHECKING:
    from geosane.downstream.comparison import CompareResult, build_initializations, compare, run_compare
    from geosane.downstream.config import (
        ArchConfig,
        CompareConfig,
        DataConfig,
        FinetuneConfig,
        GeneratedConfig,
        TaskConfig,
        ZooInitConfig,
        load_compare_config,
        load_finetune_config,
    )
    from geosane.downstream.data import (
        TaskData,
        TaskSplits,
        check_same_classes,
        check_selection_size,
        load_task_data,
    )
    from geosane.downstream.finetuning import (
        FinetuneResult,
        build_task_model,
        finetune,
        initialization_from_source,
    )
    from geosane.downstream.inits import (
        GeneratedDir,
        Initialization,
        load_source,
        read_generated_dir,
        zoo_initializations,
    )
    from geosane.downstream.merges import MergeResult, average_merge, dare_merge, task_vectors, ties_merge

__all__ = [
    "ArchConfig",
    "CompareConfig",
    "CompareResult",
    "DataConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "GeneratedConfig",
    "GeneratedDir",
    "Initialization",
    "MergeResult",
    "TaskConfig",
    "TaskData",
    "TaskSplits",
    "ZooInitConfig",
    "average_merge",
    "build_initializations",
    "build_task_model",
    "check_same_classes",
    "check_selection_size",
    "compare",
    "dare_merge",
    "finetune",
    "initialization_from_source",
    "load_compare_config",
    "load_finetune_config",
    "load_source",
    "load_task_data",
    "read_generated_dir",
    "run_compare",
    "task_vectors",
    "ties_merge",
    "zoo_initializations",
]

# Names load on first use (PEP 562) so that `geosane --help` does not import torch.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "comparison": ("CompareResult", "build_initializations", "compare", "run_compare"),
        "config": (
            "ArchConfig",
            "CompareConfig",
            "DataConfig",
            "FinetuneConfig",
            "GeneratedConfig",
            "TaskConfig",
            "ZooInitConfig",
            "load_compare_config",
            "load_finetune_config",
        ),
        "data": ("TaskData", "TaskSplits", "check_same_classes", "check_selection_size", "load_task_data"),
        "finetuning": ("FinetuneResult", "build_task_model", "finetune", "initialization_from_source"),
        "inits": (
            "GeneratedDir",
            "Initialization",
            "load_source",
            "read_generated_dir",
            "zoo_initializations",
        ),
        "merges": ("MergeResult", "average_merge", "dare_merge", "task_vectors", "ties_merge"),
    },
)
