"""The stage pipeline: ordered stages, skip-if-finished, ``--only`` and ``--from``.

Stages run in a fixed order (data → synth → tokenizer → pretrain → midtrain →
refusal → sft → pts → dpo → judge → dpo_judge → eval → report); later issues insert theirs (synthetic data, curation, SFT, DPO) into
``STAGES``. Each stage declares the recipe sections it reads and the stages whose
output it consumes; its fingerprint hashes both, so changing ``pretrain.lr`` marks
pretraining and everything downstream as out of date, and nothing upstream.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from phiforge.data.records import write_json
from phiforge.errors import StageError
from phiforge.recipe.load import resolved_dict
from phiforge.recipe.schema import Recipe
from phiforge.run import rundir
from phiforge.run.context import StageContext


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...]
    run: Callable[[StageContext], dict]
    resumable: bool = False   # keep partial output (checkpoints) across restarts
    always: bool = False      # rerun every time (cheap, e.g. the report)
    description: str = ""
    distributed: bool = False  # under torchrun every rank runs it (training); others run on rank 0 only


def _lazy(module: str, fn: str) -> Callable[[StageContext], dict]:
    """Import a stage's implementation only when it runs (keeps the CLI fast)."""
    def call(ctx: StageContext) -> dict:
        import importlib
        return getattr(importlib.import_module(module), fn)(ctx)
    call.__qualname__ = f"{module}.{fn}"
    return call


STAGES: list[Stage] = [
    Stage("data", ("data",), (), _lazy("phiforge.data.stage", "run_data"),
          description="make or import the corpora, held-out and eval sets"),
    Stage("curate", ("models", "curate"), ("data",), _lazy("phiforge.curate.stage", "run_curate"), resumable=True,
          description="organic-data curation: HTML extraction, language ID, corruption, dedup, decontamination, "
                      "quality classifier"),
    Stage("synth", ("models", "synth"), ("data",), _lazy("phiforge.synth.stage", "run_synth"), resumable=True,
          description="synthetic data: the recipe's generation pipelines (teacher via [models])"),
    Stage("tokenizer", ("tokenizer",), ("data", "curate", "synth"), _lazy("phiforge.tokenize.stage", "run_tokenizer"),
          description="train (bpe) or build (phi4) the tokenizer and encode every source"),
    Stage("pretrain", ("model", "pretrain"), ("tokenizer",), _lazy("phiforge.train.stages", "run_pretrain"),
          resumable=True, distributed=True, description="pretrain on the source mixture"),
    Stage("midtrain", ("midtrain",), ("pretrain",), _lazy("phiforge.train.stages", "run_midtrain"),
          resumable=True, distributed=True, description="long-context midtraining (RoPE base up, LR / 10, 30% long data)"),
    Stage("refusal", ("models", "refusal"), ("data", "tokenizer", "pretrain", "midtrain"),
          _lazy("phiforge.posttrain.stages", "run_refusal"), resumable=True,
          description="hallucination-refusal SFT rows and DPO pairs from trivia questions"),
    Stage("sft", ("sft",), ("data", "synth", "tokenizer", "pretrain", "midtrain", "refusal"),
          _lazy("phiforge.posttrain.stages", "run_sft"), resumable=True, distributed=True,
          description="supervised fine-tuning on chat data (loss on assistant tokens)"),
    Stage("pts", ("models", "pts"), ("data", "sft"), _lazy("phiforge.posttrain.stages", "run_pts"),
          resumable=True, description="Pivotal Token Search on the SFT policy: single-token DPO pairs"),
    Stage("dpo", ("dpo",), ("sft", "pts", "refusal"), _lazy("phiforge.posttrain.stages", "run_dpo"), resumable=True,
          distributed=True,
          description="DPO round 1 on the PTS pairs (exact token ids)"),
    Stage("judge", ("models", "judge"), ("data", "tokenizer", "sft", "dpo"),
          _lazy("phiforge.posttrain.stages", "run_judge"), resumable=True,
          description="judge-guided pairs: candidates from several models, labelled by the judge"),
    Stage("dpo_judge", ("dpo_judge",), ("sft", "dpo", "judge", "refusal"), _lazy("phiforge.posttrain.stages", "run_dpo_judge"),
          resumable=True, distributed=True, description="DPO round 2 on the judge-guided pairs"),
    Stage("eval", ("eval",), ("pretrain", "midtrain", "sft", "dpo", "dpo_judge"),
          _lazy("phiforge.evals.stage", "run_eval"),
          description="exact-answer accuracy on held-out problems"),
    Stage("report", ("report",), ("eval",), _lazy("phiforge.report.stage", "run_report"), always=True,
          description="write report.html"),
]


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def get_stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise StageError(f"unknown stage {name!r}; stages are {stage_names()}")


# Stages that only make a base model; a run that starts post-training from a model folder skips them.
PRETRAINING_STAGES = ("tokenizer", "pretrain", "midtrain")
# Stages whose starting model may be a folder outside the run: its identity joins their fingerprint.
START_MODEL_STAGES = {"refusal": None, "sft": "sft", "dpo": "dpo", "dpo_judge": "dpo_judge"}


def is_enabled(recipe: Recipe, stage: Stage) -> bool:
    """The section's ``enabled``; a post-training-only run (``sft.init`` = a model folder, report §4 on
    your own model) also skips the base-model stages, and the data stage when it has nothing to make."""
    if recipe.start_model() and stage.name in PRETRAINING_STAGES:
        return False
    if stage.name == "data" and not recipe.data.makes_data():
        return False
    section = getattr(recipe, stage.sections[-1], None)
    return bool(getattr(section, "enabled", True))


def fingerprints(recipe: Recipe) -> dict[str, str]:
    """Config fingerprint per stage, chained through the stages it consumes."""
    data = resolved_dict(recipe)
    fps: dict[str, str] = {}
    for stage in STAGES:
        payload = stage_payload(data, stage, fps)
        # A disabled stage feeds nothing downstream: editing its settings must not outdate later stages.
        fps[stage.name] = rundir.fingerprint(payload) if is_enabled(recipe, stage) else "disabled"
    return fps


def stage_payload(data: dict, stage: Stage, fps: dict[str, str]) -> dict:
    payload = {"seed": data["run"]["seed"], **{s: data[s] for s in stage.sections},
               "inputs": {i: fps.get(i) for i in stage.inputs}}
    folder = _start_folder(data, stage.name)
    if folder:
        from phiforge.model.hf import folder_identity

        payload["start_model"] = folder_identity(folder)
    return payload


def _start_folder(data: dict, name: str) -> str | None:
    """The model folder outside the run that ``name`` starts from (or probes, for refusal), if any.

    Its path, config hash and weight file sizes/mtimes go into the fingerprint, so
    replacing the model reruns the stage and everything downstream.
    """
    from phiforge.recipe.schema import is_model_path

    if name not in START_MODEL_STAGES:
        return None
    own = START_MODEL_STAGES[name]
    if own and is_model_path(data[own]["init"]):
        return data[own]["init"]
    if name == "refusal" and data["sft"]["enabled"] and is_model_path(data["sft"]["init"]):
        return data["sft"]["init"]
    return None


def run_dir_for(recipe: Recipe) -> Path:
    return rundir.runs_root(recipe.run.out_dir) / recipe.run.name


def select(recipe: Recipe, only: str | None, start: str | None) -> list[Stage]:
    """The enabled stages to run, honouring ``--only`` / ``--from``."""
    names = stage_names()
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in names:
            raise StageError(f"{flag} {value}: unknown stage; stages are {', '.join(names)}")
    chosen = [s for s in STAGES if is_enabled(recipe, s)]
    if only:
        return [s for s in chosen if s.name == only]
    if start:
        return [s for s in chosen if names.index(s.name) >= names.index(start)]
    return chosen


def run_pipeline(recipe: Recipe, only: str | None = None, start: str | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Run the selected stages; finished stages with a matching fingerprint are skipped.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the ranks join one process group: rank 0
    runs every stage and writes every file; the other ranks join only the training
    stages (``Stage.distributed``), waiting for their inputs by polling the completion
    markers, not in a collective, so data stages of any length cannot time them out.
    """
    from phiforge.train import distributed as dist

    with dist.process_group(_device_type(recipe)) as env:
        return _run_selected(recipe, env, only, start, log)


def _run_selected(recipe: Recipe, env, only: str | None, start: str | None, log) -> Path:
    run_dir = run_dir_for(recipe)
    fps = fingerprints(recipe)
    selected = select(recipe, only, start)
    forced = {s.name for s in selected} if (only or start) else set()
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.resolved.json", resolved_dict(recipe))
        _write_resolved_toml(run_dir, recipe)
        if env.distributed:
            log(f"torchrun: {env.world_size} ranks; training stages run on all of them, the others on rank 0")
    for stage in selected:
        if env.is_main:
            _run_one(recipe, run_dir, stage, fps, force=stage.name in forced, log=log)
        elif stage.distributed:
            _follow(recipe, run_dir, stage, fps, selected, force=stage.name in forced)
    return run_dir


def _device_type(recipe: Recipe) -> str:
    from phiforge.run.context import resolve_device

    return resolve_device(recipe.run.device)


def _follow(recipe: Recipe, run_dir: Path, stage: Stage, fps: dict, selected: list[Stage], force: bool) -> None:
    """A rank other than 0: train ``stage`` beside rank 0 once its inputs exist; write nothing else."""
    from phiforge.train.distributed import barrier

    running = {s.name for s in selected}
    for name in stage.inputs:
        if name in running:
            _wait_for_marker(run_dir / name, fps[name])
    marker = rundir.read_marker(run_dir / stage.name)
    if marker and not force:
        if marker["fingerprint"] == fps[stage.name]:
            return
        raise StageError(_changed_message(stage, marker, recipe, run_dir))
    barrier()  # rank 0 has prepared the stage folder
    ctx = StageContext(recipe, run_dir, stage.name, log=lambda m: None)
    try:
        stage.run(ctx)
    finally:
        ctx.close()


def _wait_for_marker(stage_dir: Path, fp: str, poll_s: float = 2.0) -> None:
    """Poll until rank 0 has finished the stage in ``stage_dir`` (torchrun stops us if rank 0 fails)."""
    while True:
        marker = rundir.read_marker(stage_dir)
        if marker and marker["fingerprint"] == fp:
            return
        time.sleep(poll_s)


def _run_one(recipe: Recipe, run_dir: Path, stage: Stage, fps: dict, force: bool, log) -> None:
    stage_dir = run_dir / stage.name
    marker = rundir.read_marker(stage_dir)
    fp = fps[stage.name]
    if marker and not force and not stage.always:
        if marker["fingerprint"] == fp:
            log(f"[{stage.name}] already finished ({stage_dir}); skipping")
            _update_run_json(run_dir, stage.name, {"status": "skipped"})
            return
        raise StageError(_changed_message(stage, marker, recipe, run_dir))
    if marker:
        rundir.clear_stage(stage_dir)
    rundir.prepare_stage_dir(stage_dir, fp, stage.resumable, lambda m: log(f"[{stage.name}] {m}"))
    if stage.distributed:
        from phiforge.train.distributed import barrier

        barrier()  # the other ranks start the stage only now (see _follow)
    _execute(recipe, run_dir, stage, fp, log)


def _execute(recipe: Recipe, run_dir: Path, stage: Stage, fp: str, log) -> None:
    ctx = StageContext(recipe, run_dir, stage.name, log=lambda m: log(f"[{stage.name}] {m}"))
    log(f"[{stage.name}] start: {stage.description}")
    _update_run_json(run_dir, stage.name, {"status": "running"})
    t0 = time.perf_counter()
    try:
        with rundir.PeakRSS() as mem:
            stats = stage.run(ctx) or {}
    except BaseException:
        _update_run_json(run_dir, stage.name, {"status": "failed", "wall_s": time.perf_counter() - t0})
        raise
    finally:
        ctx.close()
    wall = time.perf_counter() - t0
    stats = {"stage": stage.name, "wall_s": round(wall, 2), "peak_rss_mb": round(mem.peak_mb, 1), **stats}
    if ctx.model_usage():
        stats.setdefault("models", ctx.model_usage())
    write_json(ctx.stage_dir / "stats.json", stats)
    payload = stage_payload(resolved_dict(recipe), stage, fingerprints(recipe))
    rundir.write_marker(ctx.stage_dir, fp, payload)
    _update_run_json(run_dir, stage.name, {"status": "done", "wall_s": stats["wall_s"],
                                           "peak_rss_mb": stats["peak_rss_mb"]})
    log(f"[{stage.name}] done in {wall:.1f}s (peak RSS {mem.peak_mb:,.0f} MB)")


def _changed_message(stage: Stage, marker: dict, recipe: Recipe, run_dir: Path) -> str:
    now = stage_payload(resolved_dict(recipe), stage, fingerprints(recipe))
    changed = sorted(_diff_keys(marker.get("config", {}), now))
    what = ", ".join(changed[:8]) or "an upstream stage"
    return (f"stage '{stage.name}' in {run_dir} finished with a different config (changed: {what}). "
            f"Rerun it with --from {stage.name}, or start a new run with run.name=<new name>")


def _diff_keys(old, new, prefix: str = "") -> set[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) | set(new)
        return set().union(*[_diff_keys(old.get(k), new.get(k), f"{prefix}{k}.") for k in keys]) if keys else set()
    return {prefix.rstrip(".")} if old != new else set()


def _update_run_json(run_dir: Path, stage: str, fields: dict) -> None:
    path = run_dir / "run.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("name", run_dir.name)
    data["order"] = stage_names()
    data.setdefault("stages", {}).setdefault(stage, {}).update(fields)
    write_json(path, data)


def _write_resolved_toml(run_dir: Path, recipe: Recipe) -> None:
    import tomli_w

    data = recipe.model_dump(mode="json", exclude_none=True)
    (run_dir / "config.resolved.toml").write_text(tomli_w.dumps(data))
