"""Supervised fine-tuning on chat conversations (Phi-4 report §4.1; recipe doc §6.1).

Phi-4's post-training starts with one round of SFT on ~8B tokens of chatml
conversations (math, code, reasoning, conversation, identity, safety; 40
languages) at LR 1e-6 for the 14B model; each prompt's response is the best of
several, picked by an LLM judge (``phiforge.posttrain.best_of_n``). The report
does not disclose epochs, batch size, packing or loss masking (UNCONFIRMED); our
choices, all configurable in :class:`SFTConfig`:

* **Loss masking.** Cross-entropy on the assistant's content tokens and their
  closing ``<|im_end|>`` only (``render_conversation``'s mask): the model learns
  to answer and to stop, not to imitate users or system prompts. The loss is the
  mean over the trained tokens of a micro-batch (token-weighted, so long answers
  weigh more than short ones, as in pretraining). With ``grad_accum > 1`` the
  Trainer averages micro-batch means, so a token of a micro-batch with few trained
  tokens weighs a little more than one of a full micro-batch.
* **Batching.** Padded (default): one conversation per row, right padding, mask
  0 on padding; right padding under causal attention never changes a real token's
  output, so no attention mask is passed. Packed (``packing=True``): conversations
  are concatenated into rows of at most ``max_length`` positions; each keeps its
  own position ids (restarting at 0), from which transformers (>= 4.54) builds a
  block-diagonal causal mask, so no token attends across a conversation boundary
  (``test_packed_rows_equal_separate_examples`` checks the logits). A
  conversation never spans two rows.
* **Overlong conversations** (more than ``max_length`` tokens) are dropped by
  default: truncating would keep an answer without its ending and teach the model
  to stop mid-answer. ``overlong="truncate"`` keeps the first ``max_length`` tokens.

Data contract: rows ``{"id"?: str, "messages": [{"role", "content"}, ...]}`` in
JSONL, zstd-JSONL or Parquet (files, folders of shards, globs; the dataflow's flat
records qualify). A malformed row fails with ``file:line`` and the message index
and field.

Run: ``train_sft(model, tokenizer, "sft.jsonl", SFTConfig(lr=3e-4, epochs=2), "runs/x/sft")``;
rerunning the same call resumes from ``out_dir/checkpoints``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from phiforge.data.records import write_json
from phiforge.errors import ConfigError, DataError
from phiforge.tokenize.chat import render_conversation, validate_messages
from phiforge.train.batching import grad_accum_for
from phiforge.train.distributed import current_env, sharding_of
from phiforge.train.trainer import Trainer, TrainSpec

Overlong = Literal["drop", "truncate"]


# --------------------------------------------------------------------------- config


class SFTConfig(BaseModel):
    """Settings of one SFT run (Phi-4 report §4.1). Unknown keys are rejected.

    The report gives only the LR (1e-6 at 14B); every other default is our choice (UNCONFIRMED).
    """

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-6, gt=0, description=(
        "peak LR. The report's 1e-6 is for the 14B model; small models need far more "
        "(~1e-4 to 1e-3 for the tiny/small presets), so recipes for them must set it"))
    epochs: float = Field(1.0, gt=0, description="passes over the training examples (UNCONFIRMED in the report); "
                                                 "ignored when max_steps is set")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; None: derived from epochs")
    micro_batch_size: int = Field(8, ge=1, description="rows per forward pass (conversations, or packed rows)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    global_batch: int | None = Field(None, ge=1, description="rows per optimizer step over all ranks; set, "
                                                        "grad_accum is derived from the number of ranks")
    max_length: int = Field(2048, ge=8, description="most tokens of one conversation (template included); "
                                                    "also the length of a packed row")
    packing: bool = Field(False, description="concatenate conversations into rows of max_length "
                                             "(block-diagonal attention); False: one padded row each")
    overlong: Overlong = Field("drop", description="conversations over max_length: drop, or keep the first "
                                                   "max_length tokens (the answer loses its ending)")
    warmup_steps: int | None = Field(None, ge=0, description="linear warm-up steps; None = 3% of the steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final LR as a fraction of the peak (linear decay)")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decay on matrices (pretraining's value; UNCONFIRMED)")
    grad_clip: float = Field(1.0, gt=0)
    valid_examples: int | None = Field(None, ge=0, description=(
        "held-out examples for the validation loss: taken from the training rows when no valid_rows are "
        "given (else the cap on them); None: round(valid_fraction x examples)"))
    valid_fraction: float = Field(0.02, ge=0, lt=0.5, description="held-out share when valid_examples is None")
    seed: int = Field(0, ge=0, description="shuffling of examples per epoch and of the held-out split")
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0, description="steps between validation losses; 0: only at the end")
    checkpoint_every: int = Field(100, ge=0, description="steps between checkpoints; 0: only on interrupt")
    keep_checkpoints: int = Field(2, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPUs, fp32 on CPUs")


# --------------------------------------------------------------------------- reading rows


def read_sft_rows(source: str | Path | Iterable[str | Path]) -> list[dict]:
    """``{"id", "messages"}`` rows of JSONL / zstd-JSONL / Parquet files, folders or globs.

    Every row is validated as it is read; errors name ``file:line`` (``file:row N``
    for Parquet), then the message index and field, e.g.
    ``data.jsonl:3: messages[1].role: 'bot' is not one of [...]``.
    """
    from phiforge.dataflow.shards import list_shards, read_rows

    return [check_sft_row(row, where) for path in list_shards(source) for where, row in read_rows(path)]


def check_sft_row(row, where: str) -> dict:
    """The row as ``{"id", "messages"}``; ``DataError`` prefixed with ``where`` if malformed."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with 'messages', got {type(row).__name__}")
    if "messages" not in row:
        raise DataError(f"{where}: missing field 'messages' (fields present: {sorted(row)}); SFT rows are "
                        "{\"messages\": [{\"role\": ..., \"content\": ...}, ...]}")
    try:
        messages = validate_messages(row["messages"])
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    return {"id": row.get("id"), "messages": messages}


# --------------------------------------------------------------------------- encoding


@dataclass(slots=True)
class SFTExample:
    """One tokenized conversation: ``ids`` and ``mask`` (1 = trained token), same length."""

    ids: np.ndarray
    mask: np.ndarray
    id: str | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class EncodeStats:
    """Counters of :func:`encode_conversations` (tokens are those of the kept examples)."""

    rows: int = 0
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "examples": self.examples, "tokens": self.tokens,
                "trained_tokens": self.trained_tokens, "truncated": self.truncated, "dropped": dict(self.dropped)}


def encode_conversations(tokenizer, rows: Iterable[dict], max_length: int,
                         overlong: Overlong = "drop") -> tuple[list[SFTExample], EncodeStats]:
    """Tokenize ``rows`` into examples with loss masks; drop (and count) unusable ones.

    Drop reasons: ``empty`` (no messages), ``overlong`` (over ``max_length`` with
    ``overlong="drop"``), ``no_assistant_tokens`` (nothing to train on, also when
    truncation cut every assistant token). Rows not read by :func:`read_sft_rows`
    are validated here; errors name the row index and id.
    """
    if overlong not in ("drop", "truncate"):
        raise ConfigError(f"overlong={overlong!r}: use 'drop' or 'truncate'")
    examples, stats = [], EncodeStats()
    for i, row in enumerate(rows):
        stats.rows += 1
        example, reason = _encode_row(tokenizer, row, i, max_length, overlong, stats)
        if reason is not None:
            stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
            continue
        examples.append(example)
        stats.examples += 1
        stats.tokens += len(example)
        stats.trained_tokens += int(example.mask.sum())
    return examples, stats


def _encode_row(tokenizer, row, i: int, max_length: int, overlong: Overlong,
                stats: EncodeStats) -> tuple[SFTExample | None, str | None]:
    where = f"row {i}" + (f" (id {row['id']!r})" if isinstance(row, dict) and row.get("id") else "")
    row = check_sft_row(row, where)
    if not row["messages"]:
        return None, "empty"
    ids, mask = render_conversation(tokenizer, row["messages"])
    if len(ids) > max_length:
        if overlong == "drop":
            return None, "overlong"
        ids, mask = ids[:max_length], mask[:max_length]
        stats.truncated += 1
    if not any(mask[1:]):  # position 0 is never a target
        return None, "no_assistant_tokens"
    return SFTExample(np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.int8), row["id"]), None


# --------------------------------------------------------------------------- batches


@dataclass
class SFTBatch:
    """A micro-batch: inputs, next-token targets and which targets are trained.

    ``position_ids`` is set for packed rows (restarting at 0 per conversation, which
    makes attention block-diagonal) and None for padded rows. ``n_tokens`` counts the
    real (non-padding) input positions, so the Trainer's tok/s is comparable with
    pretraining; the trained tokens are ``loss_mask.sum()`` (logged as ``trained_tokens``).
    """

    input_ids: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64: the token after each input position
    loss_mask: torch.Tensor  # (B, T) bool: the target is an assistant token
    position_ids: torch.Tensor | None  # (B, T) int64, packed rows only
    n_tokens: int

    def to(self, device) -> "SFTBatch":
        pos = None if self.position_ids is None else self.position_ids.to(device)
        return SFTBatch(self.input_ids.to(device), self.targets.to(device), self.loss_mask.to(device), pos,
                        self.n_tokens)

    @property
    def trained_tokens(self) -> int:
        return int(self.loss_mask.sum())


def collate(rows: list[list[SFTExample]], pad_id: int, packed: bool) -> SFTBatch:
    """One batch from rows of examples (one example per row unless packed), right-padded.

    An example of ``L`` tokens fills ``L - 1`` positions: inputs ``ids[:-1]``, targets
    ``ids[1:]`` trained where ``mask[1:]``; examples never predict each other's tokens.
    """
    width = max(sum(len(e) - 1 for e in row) for row in rows)
    shape = (len(rows), width)
    ids, targets = np.full(shape, pad_id, np.int64), np.full(shape, pad_id, np.int64)
    mask, pos = np.zeros(shape, np.bool_), np.zeros(shape, np.int64)
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e) - 1
            ids[r, at:at + n], targets[r, at:at + n] = e.ids[:-1], e.ids[1:]
            mask[r, at:at + n], pos[r, at:at + n] = e.mask[1:], np.arange(n)
            at += n
        pos[r, at:] = np.arange(width - at)  # padding is a segment of its own
    n_tokens = sum(len(e) - 1 for row in rows for e in row)
    return SFTBatch(torch.from_numpy(ids), torch.from_numpy(targets), torch.from_numpy(mask),
                    torch.from_numpy(pos) if packed else None, n_tokens)


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Greedy in-order packing: indices into ``lengths`` grouped so each group's
    ``sum(length - 1)`` fits ``capacity`` (order kept, so the epoch shuffle survives)."""
    rows, current, used = [], [], 0
    for i, n in enumerate(lengths):
        if current and used + n - 1 > capacity:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += n - 1
    if current:
        rows.append(current)
    return rows


# --------------------------------------------------------------------------- objective


def masked_lm_loss(model, batch: SFTBatch, autocast: Callable) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy over the trained (assistant) targets of the batch.

    Token-weighted across the batch (sum of token losses / trained tokens). Only the
    trained positions go through the output layer, which saves the (B, T, vocab)
    logits of prompts and padding (large with Phi-4's 100K vocabulary).
    """
    n = batch.trained_tokens
    with autocast():
        logits = _trained_logits(model, batch)
    if n == 0:  # cannot happen with encode_conversations' examples; keep the graph for backward
        return logits.float().sum() * 0.0, {"trained_tokens": 0}
    loss = F.cross_entropy(logits.float(), batch.targets[batch.loss_mask], reduction="sum") / n
    return loss, {"trained_tokens": n}


def _trained_logits(model, batch: SFTBatch) -> torch.Tensor:
    """Logits at the trained positions, (n_trained, vocab)."""
    kwargs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    body, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if body is None or head is None:  # not a *ForCausalLM with the usual layout: full logits
        return model(**kwargs).logits[batch.loss_mask]
    hidden = body(**kwargs).last_hidden_state
    return head(hidden[batch.loss_mask])


# --------------------------------------------------------------------------- sampler / eval set


class SFTSampler:
    """Endless, seeded, resumable stream of SFT micro-batches, epoch by epoch.

    Each epoch shuffles the examples with ``(seed, epoch)``, then forms rows: one
    example per row, or greedy in-order packs (``packing``). The stream of rows is a
    pure function of (seed, position), so the state is three integers. For data
    parallelism, rank ``r`` of ``world_size`` takes global rows ``i ≡ r (mod world_size)``.
    """

    def __init__(self, examples: list[SFTExample], pad_id: int, *, packing: bool = False,
                 max_length: int = 2048, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not examples:
            raise DataError("SFT: no training examples left after encoding; check the drop counts")
        self.examples, self.pad_id, self.packing = examples, int(pad_id), packing
        self.max_length, self.seed, self.rank, self.world_size = max_length, seed, rank, world_size
        self.epoch, self.pos, self.index = 0, 0, 0
        self._rows: tuple[int, list[list[int]]] | None = None

    def rows_of_epoch(self, epoch: int) -> list[list[int]]:
        """Example indices of each row of ``epoch`` (cached for the current epoch)."""
        if self._rows is None or self._rows[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples)).tolist()
            if self.packing:
                rows = pack_rows([len(self.examples[i]) for i in order], self.max_length)
                rows = [[order[j] for j in row] for row in rows]
            else:
                rows = [[i] for i in order]
            self._rows = (epoch, rows)
        return self._rows[1]

    def _advance(self) -> list[int] | None:
        rows = self.rows_of_epoch(self.epoch)
        row = rows[self.pos]
        mine = self.index % self.world_size == self.rank
        self.pos, self.index = self.pos + 1, self.index + 1
        if self.pos == len(rows):
            self.epoch, self.pos = self.epoch + 1, 0
        return row if mine else None

    def next_batch(self, batch_size: int) -> SFTBatch:
        rows: list[list[SFTExample]] = []
        while len(rows) < batch_size:
            row = self._advance()
            if row is not None:
                rows.append([self.examples[i] for i in row])
        while self.index % self.world_size:  # finish the round: the state is the global position
            self._advance()
        return collate(rows, self.pad_id, self.packing)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "index": self.index, "seed": self.seed,
                "world_size": self.world_size, "packing": self.packing, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("fingerprint", "packing", "seed"):  # the world size may change: the position is global
            if state.get(key) != mine[key]:
                raise ConfigError(f"SFT checkpoint {key} {state.get(key)!r} differs from this run's {mine[key]!r}: "
                                  "the training data or settings changed; restore them or use a new out_dir")
        self.epoch, self.pos, self.index = int(state["epoch"]), int(state["pos"]), int(state["index"])

    def fingerprint(self) -> list[int]:
        """Examples and tokens: a cheap check that a resume sees the same data."""
        return [len(self.examples), int(sum(len(e) for e in self.examples))]

    def epochs_so_far(self) -> float:
        """Completed epochs plus the fraction of the current one (in rows)."""
        return self.epoch + self.pos / len(self.rows_of_epoch(self.epoch))

    def rows_per_epoch(self) -> int:
        """Rows of epoch 0 (packed epochs differ by a row or two, as the shuffle changes the packs)."""
        return len(self.rows_of_epoch(0))


class SFTEvalSet:
    """Held-out examples in a fixed order; ``eval_set[i:j]`` is a padded :class:`SFTBatch`."""

    def __init__(self, examples: list[SFTExample], pad_id: int):
        self.examples, self.pad_id = examples, int(pad_id)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, s: slice) -> SFTBatch:
        return collate([[e] for e in self.examples[s]], self.pad_id, packed=False)


# --------------------------------------------------------------------------- training


def train_sft(model, tokenizer, train_rows, config: SFTConfig, out_dir: str | Path, valid_rows=None, *,
              device: str = "cpu", log: Callable[[str], None] = print, stop_after: int | None = None,
              parallel=None) -> dict:
    """Encode, split, train with the shared ``Trainer`` (resuming from ``out_dir/checkpoints``).

    ``train_rows`` / ``valid_rows``: row dicts, or a path/folder/glob for
    :func:`read_sft_rows`. Writes ``out_dir/sft.json`` (config + data counters) and
    the Trainer's ``metrics.jsonl``; returns the Trainer summary plus data counts and
    ``epochs``. Exporting the model is left to the caller (the stage).
    """
    out_dir = Path(out_dir)
    train, valid, data = prepare_sft_data(tokenizer, train_rows, valid_rows, config)
    pad_id = pad_token_id(tokenizer)
    env = current_env()
    sampler = SFTSampler(train, pad_id, packing=config.packing, max_length=config.max_length, seed=config.seed,
                         rank=env.rank, world_size=env.world_size)
    spec = sft_train_spec(config, sampler.rows_per_epoch(), device, env.world_size)
    write_json(out_dir / "sft.json", {"config": config.model_dump(), "data": data, "max_steps": spec.max_steps})
    log(f"sft: {len(train):,} train / {len(valid):,} valid examples, {data['train']['trained_tokens']:,} trained "
        f"of {data['train']['tokens']:,} tokens, dropped {data['train']['dropped'] or 'none'}; "
        f"{spec.max_steps} steps at peak LR {spec.lr:.2e}")
    evals = {"valid": SFTEvalSet(valid, pad_id)} if valid else None
    trainer = Trainer(model, spec, sampler, out_dir, eval_sets=evals, device=device, objective=masked_lm_loss,
                      log=log, stop_after=stop_after, parallel=parallel)
    summary = trainer.fit()
    return {**summary, "epochs": round(sampler.epochs_so_far(), 4), "examples": len(train),
            "valid_examples": len(valid), "data": data, "max_steps": spec.max_steps, "precision": spec.precision,
            "ranks": env.world_size, "sharding": sharding_of(trainer.model)}


def prepare_sft_data(tokenizer, train_rows, valid_rows, config: SFTConfig):
    """``(train_examples, valid_examples, counters)``; held out from train when no valid rows are given."""
    train, stats = encode_conversations(tokenizer, _rows(train_rows), config.max_length, config.overlong)
    data = {"train": stats.as_dict()}
    if valid_rows is not None:
        valid, vstats = encode_conversations(tokenizer, _rows(valid_rows), config.max_length, config.overlong)
        data["valid"] = vstats.as_dict()
        return train, valid[:config.valid_examples], data
    n_valid = held_out_count(len(train), config)
    order = np.random.default_rng([config.seed, 7919]).permutation(len(train))
    held = set(order[:n_valid].tolist())
    return ([e for i, e in enumerate(train) if i not in held], [train[i] for i in sorted(held)], data)


def held_out_count(n: int, config: SFTConfig) -> int:
    """Examples held out of ``n``; always leaves at least one for training."""
    want = config.valid_examples if config.valid_examples is not None else round(config.valid_fraction * n)
    return max(0, min(want, n - 1))


def _rows(rows) -> Iterable[dict]:
    return read_sft_rows(rows) if isinstance(rows, (str, Path)) else rows


def sft_train_spec(config: SFTConfig, rows_per_epoch: int, device: str, world_size: int = 1) -> TrainSpec:
    """The Trainer settings: steps from ``max_steps`` or ``epochs`` x rows / rows per step."""
    from phiforge.run.context import resolve_precision

    accum = grad_accum_for(config, world_size, "sft")
    per_step = config.micro_batch_size * accum * world_size
    steps = config.max_steps or max(1, math.ceil(config.epochs * rows_per_epoch / per_step))
    warmup = config.warmup_steps if config.warmup_steps is not None else round(0.03 * steps)
    return TrainSpec(max_steps=steps, micro_batch_size=config.micro_batch_size, grad_accum=accum,
                     seq_len=config.max_length, lr=config.lr, min_lr_ratio=config.min_lr_ratio,
                     warmup_steps=min(warmup, steps), weight_decay=config.weight_decay,
                     grad_clip=config.grad_clip, log_every=config.log_every, eval_every=config.eval_every,
                     checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
                     precision=resolve_precision(config.precision, device))


def pad_token_id(tokenizer) -> int:
    """The pad id (never trained, any valid id works): pad, else eos, else 0."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0
