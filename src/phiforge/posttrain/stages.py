"""The post-training stages of a recipe (Phi-4 report §4): refusal → sft → pts → dpo → judge → dpo_judge.

Order and inputs follow the report: one round of SFT; DPO round 1 on Pivotal
Token Search pairs sampled from the SFT policy; DPO round 2 on judge-guided
pairs, trained on top of round 1 (§4.2, "both rounds on top of the SFT model,
sequentially"). Disabling ``dpo`` makes ``dpo_judge`` start from SFT: the
report's "DPO stage 2 only" column of Table 9.

Each stage reads its inputs from earlier stage folders and writes its own:
``sft/model``, ``pts/{pivots,pairs,pairs.trl,solutions}.jsonl``, ``dpo/model``,
``judge/{pairs.text,pairs}.jsonl``, ``dpo_judge/model``, and (when enabled)
``refusal/{sft,pairs.text,pairs}.jsonl`` from trivia questions (§4.4), which SFT
and DPO mix in by naming ``"refusal"`` in ``sft.data`` / ``dpo.pairs``. Training stages resume
from their checkpoints; PTS and the judge resume chunk by chunk.
"""

from __future__ import annotations

import json
from pathlib import Path

from phiforge.data.records import read_jsonl, read_jsonl_lines, write_json, write_jsonl
from phiforge.errors import ConfigError, DataError
from phiforge.recipe.schema import DATA_REF, is_model_path

SYNTH_REF = "synth:"
from phiforge.run.context import StageContext
from phiforge.tokenize.stage import load_run_tokenizer


# -- shared helpers ------------------------------------------------------------
def resolve_ref(ctx: StageContext, ref: str) -> Path:
    """``data:<name>`` → the data stage's ``<name>.jsonl``; anything else is a path that must exist."""
    if ref.startswith(DATA_REF):
        path = ctx.input_dir("data") / f"{ref[len(DATA_REF):]}.jsonl"
    else:
        path = Path(ref).expanduser()
    if not path.is_file():
        raise DataError(f"{ctx.stage}: input {ref!r} -> {path} does not exist; check the recipe's "
                        f"[{ctx.stage}] paths")
    return path


def init_stage(ctx: StageContext, choice: str, default: str) -> str:
    """The stage whose exported model a post-training stage starts from, or a model folder path."""
    if choice != "auto":
        return choice
    return default


def load_start_model(ctx: StageContext, stage: str):
    """A stage's exported model (Phi-4 architecture), or any causal LM from a folder (``<stage>.init`` = path).

    In a run that started from a model folder, later stages' models have that
    folder's architecture, so they load through the general loader too. Loaded on the
    CPU: the trainer places it on the device, or shards it there one unit at a time.
    """
    from phiforge.model.hf import load_causal_lm

    if is_model_path(stage):
        ctx.log(f"starting from the model folder {stage}")
        return load_causal_lm(stage, device="cpu", field=f"{ctx.stage}.init")
    if ctx.recipe.start_model():
        ctx.log(f"starting from {stage}/model")
        return load_causal_lm(ctx.input_dir(stage) / "model", device="cpu", field=f"{ctx.stage}.init")
    from phiforge.train.checkpoint import load_hf_model

    ctx.log(f"starting from {stage}/model")
    return load_hf_model(ctx.input_dir(stage) / "model", device="cpu")


def student_tokenizer(ctx: StageContext, start: str | None = None):
    """The tokenizer the policy is trained and prompted with.

    A model folder brings its own tokenizer and chat template (report §4 applied to
    that model: it keeps the chat format it was instruction-tuned in); a run that
    pretrained uses its tokenizer stage. ``start`` is the stage's own start model.
    """
    folder = start if start and is_model_path(start) else ctx.recipe.start_model()
    if folder:
        from phiforge.model.hf import load_chat_tokenizer

        field = f"{ctx.stage}.init" if folder == start else ctx.recipe.start_model_field()
        return load_chat_tokenizer(folder, field=field)
    return load_run_tokenizer(ctx.input_dir("tokenizer"))


def _export(ctx: StageContext, model, tok) -> None:
    from phiforge.train.checkpoint import export_hf_model

    export_hf_model(model, tok, ctx.stage_dir / "model")
    ctx.log(f"exported Hugging Face model to {ctx.stage_dir / 'model'}")


def _threads(ctx: StageContext) -> None:
    import torch

    torch.manual_seed(ctx.recipe.run.seed)
    if ctx.recipe.run.threads:
        torch.set_num_threads(ctx.recipe.run.threads)


def prompt_rows(ctx: StageContext, ref: str, first: int, limit: int) -> list[dict]:
    """Prompts with answer keys: ``{id, messages, answer}`` (a ``question`` becomes one user turn)."""
    path = resolve_ref(ctx, ref)
    rows = []
    for lineno, obj in read_jsonl_lines(path):
        if len(rows) >= first + limit:
            break
        rows.append(_prompt_row(path, lineno, obj, len(rows)))
    return rows[first:first + limit]


def _prompt_row(path: Path, lineno: int, obj: dict, index: int) -> dict:
    if "messages" in obj:
        messages = obj["messages"]
    elif isinstance(obj.get("question"), str):
        messages = [{"role": "user", "content": obj["question"]}]
    else:
        raise DataError(f"{path}:{lineno}: a prompt needs 'question' (string) or 'messages'; add one")
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    return {"id": str(obj.get("id", f"prompt-{index:06d}")), "messages": messages,
            "answer": obj.get("answer"), "question": obj.get("question")}


# -- sft -------------------------------------------------------------------------
def run_sft(ctx: StageContext) -> dict:
    """One round of SFT (report §4.1) from the latest pretrained checkpoint, or from a model folder."""
    from phiforge.posttrain.sft import read_sft_rows, train_sft

    sec = ctx.recipe.sft
    start = init_stage(ctx, sec.init, ctx.latest_pretrained())
    tok = student_tokenizer(ctx, start)
    rows = read_sft_rows([_sft_path(ctx, ref) for ref in sec.data])
    model = load_start_model(ctx, start)
    _threads(ctx)
    summary = train_sft(model, tok, rows, sft_config(ctx), ctx.stage_dir, device=ctx.device, log=ctx.log,
                        parallel=ctx.parallel)
    _export(ctx, model, tok)
    return {**summary, "init": start}


def _sft_path(ctx: StageContext, ref: str) -> Path:
    """``refusal`` = that stage's SFT rows; ``synth:<pipeline>`` = a synth pipeline's records (e.g. best_of_n)."""
    if ref == "refusal":
        return ctx.input_dir("refusal") / "sft.jsonl"
    if ref.startswith(SYNTH_REF):
        path = ctx.input_dir("synth") / ref[len(SYNTH_REF):] / "out"
        if not path.is_dir():
            raise DataError(f"sft.data: {ref!r}: no synth pipeline output at {path}; name a [[synth.pipelines]] entry")
        return path
    return resolve_ref(ctx, ref)


def sft_config(ctx: StageContext):
    """The recipe's ``[sft]`` as the trainer's ``SFTConfig`` (``seq_len`` is the longest example)."""
    from phiforge.posttrain.sft import SFTConfig

    sec = ctx.recipe.sft
    return SFTConfig(lr=sec.lr, max_steps=sec.max_steps, micro_batch_size=sec.micro_batch_size,
                     grad_accum=sec.grad_accum, global_batch=sec.global_batch, max_length=sec.seq_len,
                     packing=sec.packing, overlong=sec.overlong,
                     warmup_steps=sec.warmup_steps, min_lr_ratio=sec.min_lr_ratio, weight_decay=sec.weight_decay,
                     grad_clip=sec.grad_clip, valid_examples=sec.valid_examples, seed=ctx.recipe.run.seed,
                     log_every=sec.log_every, eval_every=sec.eval_every, checkpoint_every=sec.checkpoint_every,
                     keep_checkpoints=sec.keep_checkpoints, precision=sec.precision)


# -- dpo (both rounds) -----------------------------------------------------------
def run_dpo(ctx: StageContext) -> dict:
    """DPO round 1 on the PTS pairs, from the SFT model (report §4.3)."""
    return _run_dpo(ctx, ctx.recipe.dpo, default_init="sft")


def run_dpo_judge(ctx: StageContext) -> dict:
    """DPO round 2 on judge-guided pairs, on top of round 1 (report §4.2); from SFT when round 1 is off."""
    default = "dpo" if ctx.recipe.dpo.enabled else "sft"
    return _run_dpo(ctx, ctx.recipe.dpo_judge, default_init=default)


def _run_dpo(ctx: StageContext, sec, default_init: str) -> dict:
    from phiforge.posttrain.dpo import train_dpo
    from phiforge.posttrain.pairs import read_token_pairs

    start = init_stage(ctx, sec.init, default_init)
    model = load_start_model(ctx, start)
    tok = student_tokenizer(ctx, start)
    vocab = model.get_input_embeddings().weight.shape[0]
    pairs = []
    for ref in sec.pairs:
        for pair in read_token_pairs(_pairs_path(ctx, ref), vocab_size=vocab):
            if len(sec.pairs) > 1:  # ids are unique per file; keep them unique across files
                pair.id = f"{ref}:{pair.id}"
            pairs.append(pair)
    if not pairs:
        ctx.log(f"WARNING: no pairs in {sec.pairs} (see that stage's stats.json drop reasons: lower its "
                f"thresholds or give it more prompts); {ctx.stage}/model is the {start} model unchanged")
        _export(ctx, model, tok)
        return {"init": start, "trained": False, "reason": "no_pairs", "pairs": {"train": 0, "valid": 0}}
    kinds = {k: sum(p.kind == k for p in pairs) for k in sorted({p.kind for p in pairs})}
    ctx.log(f"{len(pairs)} pairs from {sec.pairs}: {kinds}")
    _threads(ctx)
    summary = train_dpo(model, pairs, dpo_config(ctx, sec), ctx.stage_dir, device=ctx.device, log=ctx.log,
                        parallel=ctx.parallel)
    _export(ctx, model, tok)
    return {**summary, "init": start, "pair_kinds": kinds}


def _pairs_path(ctx: StageContext, ref: str) -> Path:
    if ref in ("pts", "judge", "refusal"):
        return ctx.input_dir(ref) / "pairs.jsonl"
    return resolve_ref(ctx, ref)


def dpo_config(ctx: StageContext, sec):
    from phiforge.posttrain.dpo import DPOConfig

    return DPOConfig(beta=sec.beta, label_smoothing=sec.label_smoothing, lr=sec.lr, min_lr_ratio=sec.min_lr_ratio,
                     max_steps=sec.max_steps, epochs=sec.epochs, micro_batch_size=sec.micro_batch_size,
                     grad_accum=sec.grad_accum, global_batch=sec.global_batch,
                     warmup_steps=sec.warmup_steps, weight_decay=sec.weight_decay, grad_clip=sec.grad_clip,
                     max_length=sec.seq_len, valid_fraction=sec.valid_fraction, seed=ctx.recipe.run.seed,
                     precision=sec.precision, log_every=sec.log_every, eval_every=sec.eval_every,
                     checkpoint_every=sec.checkpoint_every, keep_checkpoints=sec.keep_checkpoints)


# -- pts -------------------------------------------------------------------------
def run_pts(ctx: StageContext) -> dict:
    """Pivotal Token Search (report §4.3) on the SFT policy, chunk by chunk (each chunk is a resume point)."""
    sec = ctx.recipe.pts
    policy = ctx.backend("policy", policy_stage="sft")
    rows = prompt_rows(ctx, sec.prompts, sec.first, sec.max_queries)
    queries = [_pts_query(policy, row, i) for i, row in enumerate(rows)]
    oracle = build_oracle(sec.oracle)
    config = sec.search_config(ctx.recipe.run.seed)
    chunks = [queries[i:i + sec.chunk_size] for i in range(0, len(queries), sec.chunk_size)]
    ctx.log(f"{len(queries)} queries in {len(chunks)} chunks; p_gap {config.p_gap}, window "
            f"[{config.query_min_p}, {config.query_max_p}], rollouts {config.round_size}/round up to "
            f"{config.max_rollouts}")
    parts = [_pts_chunk(ctx, policy, oracle, config, chunk, k, len(chunks)) for k, chunk in enumerate(chunks)]
    return _merge_pts(ctx, parts)


def _pts_query(policy, row: dict, index: int):
    """The chat-templated query ending inside the assistant turn, as exact token ids."""
    from phiforge.posttrain.pts import PTSQuery

    if row["answer"] is None:
        raise DataError(f"pts: prompt {row['id']!r} has no 'answer'; PTS needs an answer key for the oracle")
    ids = policy.chat_prompt(row["messages"], add_generation_prompt=True)
    return PTSQuery(id=row["id"], prompt_ids=list(ids), reference=row["answer"],
                    meta={"question": row.get("question")})


def build_oracle(name: str):
    """The oracle for ``pts.oracle`` (report §4.3: tests for code, the ground truth for math)."""
    if name == "answer_line":
        from phiforge.verify.answer_line import AnswerLineOracle
        return AnswerLineOracle()
    if name == "math":
        from phiforge.verify.math import MathOracle
        return MathOracle()
    if name == "choice":
        from phiforge.verify.choice import ChoiceOracle
        return ChoiceOracle()
    if name == "code":
        from phiforge.verify.code import CodeOracle
        return CodeOracle()
    raise ConfigError(f"pts.oracle: unknown oracle {name!r}")


def _pts_chunk(ctx: StageContext, policy, oracle, config, queries, k: int, total: int) -> dict:
    """Search one chunk, or read it back if a previous (crashed) run finished it."""
    from phiforge.posttrain.pts import pairs_as_token_rows, pairs_as_trl_rows, search

    path = ctx.stage_dir / "chunks" / f"{k:05d}.json"
    if path.is_file():
        ctx.log(f"chunk {k + 1}/{total}: already searched ({path.name})")
        return json.loads(path.read_text())
    decode = _decoder(policy)
    result = search(policy, queries, oracle, config, decode=decode, log=lambda m: ctx.log(f"chunk {k + 1}: {m}"))
    part = {"result": _readable(result.to_dict(), decode), "pairs": pairs_as_token_rows(result),
            "trl": pairs_as_trl_rows(result, decode)}
    write_json(path, part)
    s = result.stats
    ctx.log(f"chunk {k + 1}/{total}: {s.queries_searched}/{s.queries} queries searched, {s.pivots} pivotal "
            f"tokens, {s.pairs} pairs, {s.completion_tokens:,} tokens generated in {s.seconds:.1f}s")
    return part


def _readable(result: dict, decode) -> dict:
    """Add token texts to solutions and pivots, for the report page (ids stay the source of truth)."""
    for sol in result["solutions"]:
        sol["token_texts"] = [decode([t]) for t in sol["ids"]]
    for pv in result["pivots"]:
        pv["context_text"] = decode(pv["prompt_ids"] + pv["prefix_ids"])
        pv["chosen_text"] = None if pv["chosen_id"] is None else decode([pv["chosen_id"]])
        pv["rejected_text"] = None if pv["rejected_id"] is None else decode([pv["rejected_id"]])
    return result


def _decoder(policy):
    tok = policy.tokenizer
    return lambda ids: tok.decode(list(ids), skip_special_tokens=True)


def _merge_pts(ctx: StageContext, parts: list[dict]) -> dict:
    """Concatenate the chunks into the stage's files and sum their counters."""
    out = ctx.stage_dir
    results = [p["result"] for p in parts]
    write_jsonl(out / "pairs.jsonl", [row for p in parts for row in p["pairs"]])
    write_jsonl(out / "pairs.trl.jsonl", [row for p in parts for row in p["trl"]])
    write_jsonl(out / "pivots.jsonl", [pv for r in results for pv in r["pivots"]])
    write_jsonl(out / "solutions.jsonl", [s for r in results for s in r["solutions"]])
    write_jsonl(out / "queries.jsonl", [q for r in results for q in r["query_estimates"]])
    totals = _sum_counters([r["stats"] for r in results])
    ctx.log(f"PTS: {totals.get('pivots', 0)} pivotal tokens, {totals.get('pairs', 0)} pairs from "
            f"{totals.get('queries_searched', 0)}/{totals.get('queries', 0)} queries; "
            f"{totals.get('completion_tokens', 0):,} policy tokens generated")
    pivots = totals.get("pivots", 0)
    totals["tokens_per_pivot"] = round(totals.get("completion_tokens", 0) / pivots, 1) if pivots else None
    return {"search": totals, "config": results[0]["config"] if results else None}


def _sum_counters(rows: list[dict]) -> dict:
    total: dict = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, dict):
                total[key] = _sum_counters([total.get(key, {}), value])
            elif isinstance(value, (int, float)):
                total[key] = round(total.get(key, 0) + value, 6)
    return total


# -- judge -----------------------------------------------------------------------
def run_judge(ctx: StageContext) -> dict:
    """Judge-guided pairs (report §4.2, App. A.2): candidates from several models, any-vs-any, judged."""
    from phiforge.dataflow.records import Record
    from phiforge.dataflow.step import StepContext
    from phiforge.posttrain.judge import text_row
    from phiforge.synth.registry import build_step

    sec = ctx.recipe.judge
    cfg = sec.step_config()
    policy_stage = "dpo" if ctx.recipe.dpo.enabled else "sft"
    roles = {*cfg.candidates, cfg.judge_role}
    models = {role: ctx.backend(role, policy_stage=policy_stage) for role in sorted(roles)}
    rows = prompt_rows(ctx, sec.prompts, sec.first, sec.max_prompts)
    records = [Record(id=r["id"], messages=r["messages"], metadata={cfg.reference_key: _reference(r)}) for r in rows]
    step = build_step("judge_dpo", cfg, models)
    sctx = StepContext("judge_dpo")
    text_rows = [text_row(rec) for rec in step.run(iter(records), sctx)]
    write_jsonl(ctx.stage_dir / "pairs.text.jsonl", text_rows)
    write_jsonl(ctx.stage_dir / "pairs.trl.jsonl", [_trl_conversational(r) for r in text_rows])
    return {**sctx.stats(), **_token_pairs(ctx, text_rows), "prompts": len(records), "policy": policy_stage}


def _reference(row: dict) -> str | None:
    return None if row.get("answer") is None else f"Answer: {row['answer']}"


def _trl_conversational(row: dict) -> dict:
    """TRL's conversational preference format (TRL applies the chat template itself)."""
    return {"id": row["id"], "prompt": row["messages"], "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def _token_pairs(ctx: StageContext, text_rows: list[dict]) -> dict:
    """The text pairs on the student's token ids (what our DPO trainer reads)."""
    from phiforge.posttrain.pairs import text_pairs_to_token_pairs, write_token_pairs

    tok = student_tokenizer(ctx)
    pairs, counts = text_pairs_to_token_pairs(tok, text_rows, where=str(ctx.stage_dir / "pairs.text.jsonl"))
    write_token_pairs(ctx.stage_dir / "pairs.jsonl", pairs)
    ctx.log(f"{len(pairs)} token pairs ({dict(counts)})")
    return {"token_pairs": dict(counts)}


# -- refusal ---------------------------------------------------------------------
def run_refusal(ctx: StageContext) -> dict:
    """Hallucination-refusal rows (report §4.4, App. A.1) probing the run's base model's knowledge."""
    from phiforge.dataflow.records import Record
    from phiforge.dataflow.step import StepContext
    from phiforge.posttrain.judge import text_row
    from phiforge.synth.registry import build_step

    sec = ctx.recipe.refusal
    cfg = sec.step_config()
    models = {role: ctx.backend(role, policy_stage=ctx.latest_pretrained())
              for role in ("teacher", "policy", cfg.checker_role)}
    records = _trivia_records(Path(sec.questions).expanduser(), sec.max_questions, cfg)
    step = build_step("hallucination_refusal", cfg, models)
    sctx = StepContext("hallucination_refusal")
    rows = [text_row(rec) for rec in step.run(iter(records), sctx)]
    sft = [{"id": r["id"], "kind": r["kind"], "messages": r["messages"]} for r in rows if "chosen" not in r]
    pairs = [r for r in rows if "chosen" in r]
    write_jsonl(ctx.stage_dir / "sft.jsonl", sft)
    write_jsonl(ctx.stage_dir / "pairs.text.jsonl", pairs)
    write_jsonl(ctx.stage_dir / "pairs.trl.jsonl", [_trl_conversational(r) for r in pairs])
    kinds = {k: sum(r["kind"] == k for r in rows) for k in sorted({r["kind"] for r in rows})}
    ctx.log(f"{len(records)} questions -> {len(sft)} SFT rows, {len(pairs)} DPO pairs: {kinds}")
    return {**sctx.stats(), **_token_pairs(ctx, pairs), "questions": len(records), "kinds": kinds}


def _trivia_records(path: Path, limit: int, cfg) -> list:
    from phiforge.dataflow.records import Record

    if not path.is_file():
        raise DataError(f"refusal.questions: {path} does not exist; point it to a JSONL of trivia questions")
    records = []
    for lineno, obj in read_jsonl_lines(path, required=("question", "answer")):
        if len(records) >= limit:
            break
        meta = {cfg.answer_key: obj["answer"], cfg.aliases_key: obj.get("aliases") or []}
        records.append(Record(id=str(obj.get("id", f"q{lineno:06d}")), text=obj["question"], metadata=meta))
    return records
