"""``geosane compare``: one architecture, one budget, several initializations, several seeds.

Initializations (``inits`` in the config, in this order): ``scratch``; ``prompt`` (the prompt
model itself); ``zoo_average``, ``ties`` and ``dare`` over zoo members; ``generated`` (the top-k
candidates of a ``geosane generate`` directory, ``generated-1`` .. ``generated-k`` by rank). Every
one is fine-tuned with the same :class:`FitConfig` for every seed on the same splits.

Output directory::

    OUT/config.yaml               the resolved config
    OUT/inits/<name>.safetensors  the merged initializations (zoo_average, ties, dare)
    OUT/runs/<init>/seed<k>/      one finetune run each (metrics.json, history.csv)
    OUT/results.csv               per init, seed and epoch
    OUT/summary.json              mean ± std per init, the verdict, run metadata
    OUT/report.md                 the table and an honest verdict
    OUT/curves.png, OUT/final_metric.png

Finished runs are skipped on rerun; an interrupted run resumes from its checkpoint.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from rich.progress import Progress

from geosane.config import save_config, to_dict
from geosane.console import console, make_progress
from geosane.data import recorded_normalization
from geosane.downstream.config import CONTROL_KINDS, CompareConfig, check_compare_config, load_compare_config
from geosane.downstream.controls import (
    NotApplicable,
    WeightSource,
    larger_member,
    matched_noise,
    nearest_member,
    prune_to,
    select_weights,
)
from geosane.downstream.data import TaskSplits, load_task_data
from geosane.downstream.finetuning import (
    FinetuneResult,
    RunPlan,
    build_distillation,
    build_task_model,
    csv_text,
    output_dir,
    plan_run,
    run_finetune,
)
from geosane.downstream.inits import (
    GeneratedDir,
    Initialization,
    arch_from_config,
    load_source,
    normalization_info,
    read_generated_dir,
    read_task_weights,
    same_architecture,
    zoo_initializations,
)
from geosane.downstream.report import (
    InitSummary,
    plot_curves,
    plot_final,
    render_report,
    results_rows,
    summarize,
    verdict,
)
from geosane.errors import ConfigError, GeosaneError
from geosane.io import claim_out_dir, save_safetensors, write_json, write_text
from geosane.zoo import ArchSpec, LoadedModel, load_weights_file

__all__ = ["CompareResult", "build_initializations", "compare", "plan_initializations", "run_compare"]


@dataclass
class CompareResult:
    """Per-init runs and summaries, and where the outputs are."""

    out_dir: Path
    metric: str
    results: dict[str, list[FinetuneResult]]
    summaries: list[InitSummary]
    verdict: str
    wall_s: float = 0.0  # this invocation (finished runs that were skipped cost nothing)

    @property
    def report(self) -> Path:
        return self.out_dir / "report.md"

    @property
    def results_csv(self) -> Path:
        return self.out_dir / "results.csv"

    @property
    def plots(self) -> list[Path]:
        return [p for p in (self.out_dir / "curves.png", self.out_dir / "final_metric.png") if p.is_file()]

    @property
    def runs_wall_s(self) -> float:
        """Summed wall time of every fine-tuning run (as recorded by each run, resumed or not)."""
        return sum(r.wall_s for runs in self.results.values() for r in runs)


def _generated(config: CompareConfig) -> GeneratedDir | None:
    if "generated" not in config.inits:
        return None
    if config.generated.dir is None:
        raise ConfigError("init 'generated' needs generated.dir (a `geosane generate` output directory)")
    generated = read_generated_dir(config.generated.dir)
    if config.generated.top_k < 1:
        raise ConfigError(f"generated.top_k must be >= 1, got {config.generated.top_k}")
    if config.generated.top_k > len(generated.candidates):
        raise ConfigError(
            f"generated.top_k={config.generated.top_k} but {generated.path} holds "
            f"{len(generated.candidates)} candidate(s)"
        )
    return generated


def _compared_arch(config: CompareConfig, generated: GeneratedDir | None) -> ArchSpec:
    arch = arch_from_config(config.arch)
    if generated is not None:
        if arch is not None and not same_architecture(arch, generated.arch):
            raise ConfigError(
                f"arch.name={arch.name} {arch.kwargs} but the generated weights in {generated.path} are "
                f"{generated.arch.name} {generated.arch.kwargs}; compare needs one architecture"
            )
        arch = arch or generated.arch
    if arch is None and config.prompt and "prompt" in config.inits:
        loaded = load_source(config.prompt)
        arch = loaded.arch
    if arch is None:
        raise ConfigError("the compared architecture is unknown: set arch.name (or give a generated.dir)")
    return arch


def build_initializations(config: CompareConfig) -> tuple[ArchSpec, list[Initialization]]:
    """Load (and merge) every initialization of ``config``; raises before anything is written."""
    arch, inits, _ = plan_initializations(config)
    return arch, inits


def plan_initializations(config: CompareConfig) -> tuple[ArchSpec, list[Initialization], dict[str, str]]:
    """The initializations of ``config`` and, with ``controls.not_applicable=report``, the ones that
    cannot be built (``name -> why``); with ``error`` (the default) those raise instead."""
    generated = _generated(config)
    arch = _compared_arch(config, generated)
    inits: list[Initialization] = []
    skipped: dict[str, str] = {}
    if "scratch" in config.inits:
        inits.append(Initialization("scratch", "scratch", arch, None, "random init"))
    prompt_source = config.prompt or (generated.prompt if generated else None)
    prompt: LoadedModel | None = None
    if "prompt" in config.inits:
        if not prompt_source:
            raise ConfigError(
                "init 'prompt' needs prompt: SOURCE (or a generated.dir whose model card names it)"
            )
        if not config.prompt and generated is not None and generated.prompt_is_random_init:
            raise ConfigError(
                f"the prompt of {generated.path} is {prompt_source} with random weights (no pretrained ones), so "
                "a 'prompt' run would only be another scratch run: remove 'prompt' from inits or set prompt: SOURCE",
                flags={"set prompt: SOURCE": "pass --prompt SOURCE"},
            )
        prompt = load_source(prompt_source, arch)
        inits.append(
            Initialization(
                "prompt", "prompt", arch, prompt.state_dict, prompt_source, normalization_info(prompt)
            )
        )
    for kinds in (["zoo_average"], ["ties", "dare"]):
        wanted = [k for k in kinds if k in config.inits]
        try:
            inits += zoo_initializations(config.zoo, arch, wanted)
        except NotApplicable as exc:
            if config.controls.not_applicable == "error":
                raise
            skipped.update(dict.fromkeys(wanted, str(exc)))
    candidates = []
    if generated is not None:
        for candidate in generated.candidates[: config.generated.top_k]:
            score = (
                f", proxy {candidate.proxy} {candidate.proxy_score:.3f}"
                if candidate.proxy_score is not None
                else ""
            )
            candidates.append(
                Initialization(
                    f"generated-{candidate.rank}", "generated", arch, load_weights_file(candidate.file),
                    f"{candidate.file.name} (rank {candidate.rank}{score})",
                    {"rank": candidate.rank, "proxy_score": candidate.proxy_score},
                )
            )  # fmt: skip
    inits += candidates
    if prompt is None and prompt_source and {"prompt_noise", "nearest"} & set(config.inits):
        prompt = load_source(prompt_source, arch)  # once, for every control that needs it
    larger = functools.cache(lambda: _larger_source(config, arch))  # weight selection and pruning share it
    for kind in CONTROL_KINDS:
        if kind not in config.inits:
            continue
        try:
            inits.append(_control(kind, config, arch, prompt_source, prompt, candidates, larger))
        except NotApplicable as exc:
            if config.controls.not_applicable == "error":
                raise NotApplicable(f"init '{kind}' is not applicable: {exc}") from None
            skipped[kind] = str(exc)
    order = {kind: i for i, kind in enumerate(config.inits)}
    inits.sort(key=lambda init: order[init.kind])
    return arch, inits, skipped


def _control(
    kind: str,
    config: CompareConfig,
    arch: ArchSpec,
    prompt_source: str | None,
    prompt: LoadedModel | None,
    generated: list[Initialization],
    larger: Callable[[], WeightSource],
) -> Initialization:
    """One control initialization of :mod:`geosane.downstream.controls` (raises NotApplicable)."""
    from geosane.zoo import Zoo

    if kind in ("prompt_noise", "nearest") and prompt is None:
        raise NotApplicable("it needs the prompt (prompt: SOURCE or a generated.dir naming it)")
    if kind == "prompt_noise":
        assert prompt is not None
        if not generated or generated[0].state_dict is None:
            raise NotApplicable("it needs generated weights to match their distance (generated.dir)")
        weights, info = matched_noise(prompt.state_dict, generated[0].state_dict, config.controls.noise_seed)
        source = f"{prompt_source} + Gaussian noise at the rank-1 candidate's distance (relative {info['distance']:.3f})"
        return Initialization("prompt_noise", kind, arch, weights, source, info)
    if kind == "reconstruction":
        if config.controls.reconstruction_dir is None:
            raise NotApplicable(
                "it needs controls.reconstruction_dir: a `geosane generate` output for the nearest zoo "
                "member with bandwidth 0"
            )
        recon = read_generated_dir(config.controls.reconstruction_dir)
        if not same_architecture(recon.arch, arch):
            raise NotApplicable(
                f"{recon.path} holds {recon.arch.name} {recon.arch.kwargs}, not the compared architecture"
            )
        first = recon.candidates[0]
        source = f"autoencoder reconstruction of {recon.prompt} ({first.file})"
        return Initialization(
            "reconstruction", kind, arch, load_weights_file(first.file), source, {"of": recon.prompt}
        )
    if kind == "distillation":
        controls = config.controls
        if controls.teacher is None:
            raise NotApplicable(
                "it needs controls.teacher: a `geosane finetune` run of the best zoo model on this task"
            )
        teacher = read_task_weights(controls.teacher, controls.distill_alpha, controls.distill_temperature)
        source = (
            f"random init, distilled from {teacher.source} (alpha {teacher.alpha}, T {teacher.temperature})"
        )
        return Initialization("distillation", kind, arch, None, source, {"teacher": teacher.source}, teacher)
    if kind == "nearest":
        assert prompt is not None
        if config.zoo.dir is None:
            raise NotApplicable("it needs a zoo (zoo.dir)")
        chosen = nearest_member(Zoo(config.zoo.dir), arch, prompt.state_dict)
        return Initialization(
            "nearest", kind, arch, chosen.state_dict, f"zoo member {chosen.note}", {"member": chosen.entry.id}
        )
    chosen = larger()
    larger_arch = chosen.entry.arch_spec
    assert larger_arch is not None
    if kind == "weight_selection":
        weights = select_weights(arch, chosen.state_dict)
        how = "weight selection (leading channels, first blocks) from"
    else:
        weights = prune_to(arch, larger_arch, chosen.state_dict)
        how = "L1-ranked hidden units, leading residual channels, pruned from"
    return Initialization(kind, kind, arch, weights, f"{how} {chosen.note}", {"member": chosen.entry.id})


def _larger_source(config: CompareConfig, arch: ArchSpec) -> WeightSource:
    """The zoo model weight selection and pruning inherit from (``controls.larger`` or the smallest larger)."""
    from geosane.zoo import Zoo

    if config.zoo.dir is None:
        raise NotApplicable("it needs a zoo (zoo.dir)")
    zoo = Zoo(config.zoo.dir)
    if config.controls.larger:
        entry = zoo.get(config.controls.larger)
        return WeightSource(entry, zoo.load_state_dict(entry.id), f"{entry.id} (controls.larger)")
    return larger_member(zoo, arch)


def _notes(config: CompareConfig, inits: list[Initialization], data: TaskSplits) -> list[str]:
    notes = []
    generated = [i for i in inits if i.kind == "generated"]
    if generated and config.generated.dir is not None:
        card = read_generated_dir(config.generated.dir).card
        if card.get("note"):
            notes.append(f"Generated weights: {card['note']}")
        notes.append(
            f"Generated weights from {config.generated.dir} (prompt {card.get('prompt')}, AE {card.get('ae_checkpoint')}); "
            "'generated' in the verdict is the rank-1 candidate by the generator's selection-split proxy."
        )
    for init in inits:
        if init.kind in ("zoo_average", "ties", "dare"):
            notes.append(
                f"{init.name}: {init.source}; {init.info.get('selection')}; members {init.info.get('members')}"
            )
            break
    scenes = data.info.get("scenes")
    if scenes:
        notes.append(f"Scenes per split: {scenes}")
    return notes


def run_compare(
    config: CompareConfig | str | Path = "compare_rsscn7",
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    overwrite: bool = False,
    show_progress: bool = True,
) -> CompareResult:
    """Compose a compare config and run (or resume) it; ``result.report`` is the report.md.

    ``config``: a :class:`CompareConfig`, a YAML file or a packaged preset name; ``overrides``:
    ``key=value`` strings or a mapping with dotted keys, e.g.
    ``run_compare("compare_rsscn7", {"data.root": DATA, "zoo.dir": ZOO, "generated.dir": GEN,
    "out": OUT, "train.epochs": 3})``. A rerun skips finished runs and resumes an interrupted one.
    """
    if overrides or not isinstance(config, CompareConfig):
        config = load_compare_config(config, overrides)
    else:
        check_compare_config(config)
    return compare(config, overwrite=overwrite, show_progress=show_progress)


def compare(
    config: CompareConfig,
    overwrite: bool = False,
    show_progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> CompareResult:
    """Run (or resume) a comparison and write its outputs into ``config.out``.

    ``callbacks``: extra Lightning callbacks for every run (one process only, ``workers=1``).
    """
    started = time.perf_counter()
    if callbacks and config.workers > 1:
        raise ConfigError("Lightning callbacks cannot be sent to worker processes: use workers=1")
    out = output_dir(
        config.out,
        "compare",
        {
            "prompt": config.prompt,
            "zoo.dir": config.zoo.dir,
            "generated.dir": config.generated.dir,
            "data.root": config.data.root,
            "data.test_data": config.data.test_data,
        },
    )
    arch, inits, skipped = plan_initializations(config)
    # every run sees the same inputs: the prompt's recorded normalization when it has one
    recorded = next((recorded_normalization(i.info) for i in inits if i.kind == "prompt"), None)
    data = load_task_data(config.data, config.task.kind, recorded)
    for init in inits:  # every init must load into the task model before anything runs
        try:
            build_task_model(init, data, config.task)
            build_distillation(init, data)
        except GeosaneError as exc:
            raise GeosaneError(
                f"initialization '{init.name}' ({init.source}): {exc}", flags=exc.flags
            ) from None
    plans: dict[tuple[str, int], RunPlan] = {}
    for init in inits:
        for seed in config.seeds:
            fit_config = replace(config.train, seed=seed, progress=False)
            run_dir = out / "runs" / init.name / f"seed{seed}"
            plans[(init.name, seed)] = plan_run(
                run_dir, init, data, config.task, fit_config, config.data, overwrite, config.test_curve
            )

    claim_out_dir(out, "compare")
    save_config(config, out / "config.yaml")
    for init in inits:
        if init.kind in ("zoo_average", "ties", "dare", *CONTROL_KINDS) and init.state_dict is not None:
            save_safetensors(
                init.state_dict, out / "inits" / f"{init.name}.safetensors", metadata={"source": init.source}
            )
    todo = sum(plan.state != "done" for plan in plans.values())
    console.print(
        f"compare: {len(inits)} initializations x {len(config.seeds)} seeds on {data.info.get('root')} "
        f"({todo} run(s) to do, {len(plans) - todo} finished) -> {out}"
    )
    jobs = [(init, seed) for init in inits for seed in config.seeds]
    if config.workers > 1:
        finished = _run_parallel(config, data, jobs, plans, out, show_progress)
    else:
        finished = _run_sequential(config, data, jobs, plans, out, show_progress, callbacks)
    results = {init.name: [finished[(init.name, seed)] for seed in config.seeds] for init in inits}
    result = _write_outputs(config, out, data, arch, inits, results, skipped)
    result.wall_s = time.perf_counter() - started
    return result


def _jsonable_info(init: Initialization) -> dict[str, Any]:
    """An initialization's source and the plain values of its info (for summary.json)."""
    info = {k: v for k, v in init.info.items() if isinstance(v, str | int | float | bool | list) or v is None}
    return {"source": init.source, **info}


def _status(result: FinetuneResult) -> str:
    return f"{result.init} seed {result.seed}: test {result.metric} {100 * result.test:.1f}"


def _run_sequential(
    config: CompareConfig,
    data: TaskSplits,
    jobs: list[tuple[Initialization, int]],
    plans: dict[tuple[str, int], RunPlan],
    out: Path,
    show_progress: bool,
    callbacks: Sequence[Callback] = (),
) -> dict[tuple[str, int], FinetuneResult]:
    finished = {}
    with make_progress() as progress:
        overall = progress.add_task("compare", total=len(jobs), status="") if show_progress else None
        for init, seed in jobs:
            result = _run_one(
                init, data, config, seed, plans[(init.name, seed)], str(out),
                progress=progress if show_progress else None, callbacks=callbacks,
            )  # fmt: skip
            finished[(init.name, seed)] = result
            if overall is not None:
                progress.update(overall, advance=1, status=_status(result))
    return finished


def _worker_setup(threads: int, parent: int) -> None:
    import threading

    import torch

    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """End this worker once the process that started it is gone.

    A worker outlives a parent that was killed (SIGKILL, the OOM killer, a closed terminal's
    process group) and would go on training, burning the cores a rerun needs and writing into the
    comparison that rerun resumes. ``os.getppid`` changes when the parent dies (the orphan is
    re-parented), which works wherever ``spawn`` does, unlike Linux's ``PR_SET_PDEATHSIG``.
    """
    import os

    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def _run_one(
    init: Initialization,
    data: TaskSplits,
    config: CompareConfig,
    seed: int,
    plan: RunPlan,
    out: str,
    progress: Progress | None = None,
    callbacks: Sequence[Callback] = (),
) -> FinetuneResult:
    """One fine-tuning run of the comparison (in this process or in a worker: a top-level function)."""
    fit_config = replace(config.train, seed=seed, progress=False)
    return run_finetune(
        init, data, config.task, fit_config, plan, save_weights=False, progress=progress,
        extra={"compare_out": out}, callbacks=callbacks, test_curve=config.test_curve,
    )  # fmt: skip


def _run_parallel(
    config: CompareConfig,
    data: TaskSplits,
    jobs: list[tuple[Initialization, int]],
    plans: dict[tuple[str, int], RunPlan],
    out: Path,
    show_progress: bool,
) -> dict[tuple[str, int], FinetuneResult]:
    """Runs in ``config.workers`` processes with ``threads_per_worker`` torch threads each.

    Small CNNs scale poorly with intra-op threads (and OpenMP threads spin when cores are shared),
    so several single-thread runs side by side use the cores better than one multi-thread run.
    Workers are spawned (not forked: forking after torch started its thread pool can hang).
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = config.threads_per_worker or max(1, (os.cpu_count() or 1) // config.workers)
    finished = {}
    todo = []
    for init, seed in jobs:
        plan = plans[(init.name, seed)]
        if plan.state == "done":
            finished[(init.name, seed)] = run_finetune(
                init, data, config.task, config.train, plan
            )  # reads it back
        else:
            todo.append((init, seed))
    context = multiprocessing.get_context("spawn")
    with (
        make_progress() as progress,
        ProcessPoolExecutor(
            config.workers, mp_context=context, initializer=_worker_setup, initargs=(threads, os.getpid())
        ) as pool,
    ):
        overall = progress.add_task(
            f"compare ({config.workers} workers x {threads} thread(s))", total=len(jobs), status="",
            completed=len(finished), visible=show_progress,
        )  # fmt: skip
        futures = {
            pool.submit(_run_one, init, data, config, seed, plans[(init.name, seed)], str(out)): (
                init.name,
                seed,
            )
            for init, seed in todo
        }
        try:
            for future in as_completed(futures):
                result = future.result()
                finished[futures[future]] = result
                progress.update(overall, advance=1, status=_status(result))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return finished


def _write_outputs(
    config: CompareConfig,
    out: Path,
    data: TaskSplits,
    arch: ArchSpec,
    inits: list[Initialization],
    results: dict[str, list[FinetuneResult]],
    skipped: dict[str, str] | None = None,
) -> CompareResult:
    skipped = skipped or {}
    kinds = {i.name: i.kind for i in inits}
    sources = {i.name: i.source for i in inits}
    metric = next(iter(results.values()))[0].metric
    summaries = summarize(results, kinds, sources)
    text = verdict(summaries, metric)
    train = config.train
    meta: dict[str, Any] = {
        "task": data.task,
        "data": data.info.get("dataset") or data.info.get("root"),
        "num_classes": data.num_classes,
        "in_chans": data.in_chans,
        "arch": f"{arch.library}:{arch.name} {arch.kwargs or ''}".strip(),
        "sizes": data.sizes(),
        "budget": f"{train.epochs} epoch(s), batch {train.batch_size}, AdamW lr {train.lr} (backbone x{train.backbone_lr_scale}), "
        f"weight decay {train.weight_decay}, warm-up {train.warmup_epochs} epoch(s), cosine",
        "seeds": list(config.seeds),
        "runs": sum(len(r) for r in results.values()),
        "runs_wall_s": sum(r.wall_s for runs in results.values() for r in runs),
        "workers": config.workers,
    }
    write_text(out / "results.csv", csv_text(results_rows(results, kinds)))
    write_json(
        out / "summary.json",
        {
            "metric": metric,
            "verdict": text,
            "meta": meta,
            "inits": [s.__dict__ for s in summaries],
            "not_applicable": skipped,
            "init_info": {i.name: _jsonable_info(i) for i in inits},
            "config": to_dict(config),
        },
    )
    if config.plots:
        plot_curves(results, metric, out / "curves.png")
        plot_final(summaries, metric, out / "final_metric.png")
    notes = _notes(config, inits, data) + [f"{name}: not applicable: {why}" for name, why in skipped.items()]
    write_text(out / "report.md", render_report(summaries, metric, meta, notes))
    return CompareResult(out, metric, results, summaries, text)
