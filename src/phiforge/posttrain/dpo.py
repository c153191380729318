"""Direct Preference Optimization on exact token ids (Phi-4 report §4, §4.2, §4.3).

Phi-4 runs two DPO rounds on top of SFT (report §4): round 1 on Pivotal Token
Search pairs (§4.3), whose chosen and rejected completions are ONE token each
after a shared prefix, and round 2 on judge-guided full-response pairs (§4.2,
App. A.2). Both use the standard objective of Rafailov et al. 2023,
https://arxiv.org/abs/2305.18290::

    loss = -log σ(β · [(log π(y_c|x) - log π_ref(y_c|x)) - (log π(y_r|x) - log π_ref(y_r|x))])

with optional conservative-DPO label smoothing ε (the preference is flipped with
probability ε). β, LR, epochs and the reference handling are not disclosed
(UNCONFIRMED); ``DPOConfig`` documents our defaults.

How log-probs are computed, on the pairs' exact ids (``pairs.py``):

* **single-token pairs** (PTS): chosen and rejected share ONE forward pass of the
  prompt; their log-probs are two entries of the next-token distribution at the
  last prompt position. No end token is appended: the pair is about one token.
* **full-sequence pairs** (judge, refusal): the sum of the response tokens'
  log-probs given prompt + response; chosen and rejected rows go through the
  model together, right-padded with an attention mask.
* A micro-batch may mix both: pairs are grouped by shape, one forward per group.
  Only the scored positions go through the LM head (like TRL's fused LM head), so
  the (rows × length × vocab) logits of a 100K-vocabulary model are never built.

The reference model is the starting policy. Its log-probs are computed ONCE
before training (``precompute_reference_logps``), stored with the pairs and
cached in the run folder, so no second copy of the model stays in memory and a
resumed run does not recompute them.

Shape legend: N pairs, R rows of one forward, L padded length, P scored positions,
E scored (position, token) entries, V vocabulary, D hidden size.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from phiforge.data.records import write_json
from phiforge.errors import ConfigError, DataError
from phiforge.posttrain.pairs import TokenPair, format_counts
from phiforge.train.batching import grad_accum_for
from phiforge.train.distributed import ParallelConfig, current_env, handles_precision, parallelize, sharding_of
from phiforge.train.trainer import Trainer, TrainSpec

REFERENCE_CACHE = "reference_logps.json"
Progress = Callable[[int, int], None]


# -- config -------------------------------------------------------------------


class DPOConfig(BaseModel):
    """DPO settings. Every default is our choice: the report discloses none of them (UNCONFIRMED)."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, description="KL strength β; 0.1 is the DPO paper's and TRL's default")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO ε; 0 = standard DPO")
    lr: float = Field(5e-7, gt=0, description="peak LR; 5e-7 as in Zephyr / Tülu 3 DPO, below Phi-4's SFT LR "
                                             "1e-6 (report §4.1); tiny models need far more")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final LR as a fraction of the peak (linear decay)")
    epochs: float = Field(1.0, gt=0, description="passes over the training pairs (ignored if max_steps is set)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; None = derived from epochs")
    micro_batch_size: int = Field(4, ge=1, description="pairs per forward/backward")
    grad_accum: int = Field(8, ge=1, description="micro-batches per optimizer step")
    global_batch: int | None = Field(None, ge=1, description="pairs per optimizer step over all ranks; set, "
                                                        "grad_accum is derived from the number of ranks")
    warmup_steps: int | None = Field(None, ge=0, description="linear warm-up steps; None = 10% of the steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay on matrices; 0 as usual for DPO")
    grad_clip: float = Field(1.0, gt=0)
    max_length: int = Field(2048, ge=2, description="longest prompt + longer response in tokens; longer "
                                                    "pairs are dropped (counted as dropped_over_max_length)")
    valid_fraction: float = Field(0.02, ge=0, lt=1, description="pairs held out for reward accuracy")
    max_valid_pairs: int = Field(512, ge=0, description="cap on held-out pairs")
    ref_batch_size: int = Field(16, ge=1, description="pairs per reference forward (no gradients)")
    seed: int = Field(0, description="shuffling and held-out split")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 on GPUs that support "
                                                                          "it, else fp32")
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0, description="held-out evaluation every N steps (0 = at the end only)")
    checkpoint_every: int = Field(100, ge=0, description="0 = only on interrupt")
    keep_checkpoints: int = Field(2, ge=1)

    def steps_for(self, n_train_pairs: int, world_size: int = 1) -> int:
        """``max_steps``, or enough steps for ``epochs`` passes over ``n_train_pairs``."""
        if self.max_steps is not None:
            return self.max_steps
        per_step = self.micro_batch_size * grad_accum_for(self, world_size, "dpo") * world_size
        return max(1, math.ceil(self.epochs * n_train_pairs / per_step))

    def train_spec(self, n_train_pairs: int, device: str, world_size: int = 1) -> TrainSpec:
        """The ``Trainer``'s settings; ``seq_len`` is ``max_length`` (only used for bookkeeping here)."""
        steps = self.steps_for(n_train_pairs, world_size)
        warmup = self.warmup_steps if self.warmup_steps is not None else round(0.1 * steps)
        return TrainSpec(max_steps=steps, micro_batch_size=self.micro_batch_size,
                         grad_accum=grad_accum_for(self, world_size, "dpo"),
                         seq_len=self.max_length, lr=self.lr, min_lr_ratio=self.min_lr_ratio,
                         warmup_steps=min(warmup, steps), weight_decay=self.weight_decay,
                         grad_clip=self.grad_clip, log_every=self.log_every, eval_every=self.eval_every,
                         checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints,
                         precision=resolve_precision(self.precision, device))


def resolve_precision(choice: str, device: str) -> str:
    """bf16 autocast on GPUs that support it, else fp32: the rule of ``run.context.resolve_precision``.

    Kept here so the DPO library does not import the recipe layer.
    """
    if choice != "auto":
        return choice
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


# -- the loss -------------------------------------------------------------------


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO losses and the implicit rewards ``β·(log π - log π_ref)`` (detached).

    With ``label_smoothing`` ε this is conservative DPO (Mitchell 2023): the label is
    assumed flipped with probability ε, so the loss is ``-(1-ε)·log σ(z) - ε·log σ(-z)``.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    z = beta * (chosen_logratios - rejected_logratios)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """TRL's reward metrics: accuracy is the share of pairs with chosen reward strictly higher.

    Read back in one transfer (one GPU sync per micro-batch, not four).
    """
    values = torch.stack([(chosen_rewards > rejected_rewards).float().mean(),
                          (chosen_rewards - rejected_rewards).mean(), chosen_rewards.mean(),
                          rejected_rewards.mean()]).tolist()
    return dict(zip(("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"), values))


# -- batches ----------------------------------------------------------------------


@dataclass
class ForwardGroup:
    """Rows that go through the model together, and which log-probs to read from them.

    ``pos_row_P``/``pos_col_P`` pick the positions whose next-token distribution is
    needed; entry ``e`` reads token ``entry_target_E[e]`` at position
    ``entry_pos_E[e]`` and adds its log-prob to output ``entry_out_E[e]`` (outputs
    0..N-1 are chosen responses, N..2N-1 rejected ones).
    """

    input_ids_RL: torch.Tensor
    attention_mask_RL: torch.Tensor
    pos_row_P: torch.Tensor
    pos_col_P: torch.Tensor
    entry_pos_E: torch.Tensor
    entry_target_E: torch.Tensor
    entry_out_E: torch.Tensor

    def to(self, device) -> ForwardGroup:
        return ForwardGroup(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class DPOBatch:
    """A micro-batch of pairs with their reference log-probs (NaN where not computed yet)."""

    groups: list[ForwardGroup]
    ref_chosen_logps_N: torch.Tensor
    ref_rejected_logps_N: torch.Tensor
    n_tokens: int

    @property
    def n_pairs(self) -> int:
        return len(self.ref_chosen_logps_N)

    def to(self, device) -> DPOBatch:
        return DPOBatch([g.to(device) for g in self.groups], self.ref_chosen_logps_N.to(device),
                        self.ref_rejected_logps_N.to(device), self.n_tokens)


def collate_pairs(pairs: Sequence[TokenPair], pad_id: int = 0, shared_forward: bool = True) -> DPOBatch:
    """Group pairs by shape (single-token vs full-sequence) into at most two forwards.

    ``shared_forward=False`` sends single-token pairs through the full-sequence path
    too (prompt+chosen and prompt+rejected rows): the same log-probs at about twice
    the cost, kept for benchmarks and cross-checks.
    """
    n = len(pairs)
    single = [i for i, p in enumerate(pairs) if p.single_token and shared_forward]
    full = [i for i, p in enumerate(pairs) if not (p.single_token and shared_forward)]
    groups = []
    if single:
        groups.append(_single_token_group([pairs[i] for i in single], single, n, pad_id))
    if full:
        groups.append(_full_sequence_group([pairs[i] for i in full], full, n, pad_id))
    refs = [[_or_nan(p.ref_chosen_logp) for p in pairs], [_or_nan(p.ref_rejected_logp) for p in pairs]]
    n_tokens = sum(int(g.attention_mask_RL.sum()) for g in groups)
    return DPOBatch(groups, torch.tensor(refs[0], dtype=torch.float32),
                    torch.tensor(refs[1], dtype=torch.float32), n_tokens)


def _single_token_group(pairs: list[TokenPair], slots: list[int], n: int, pad_id: int) -> ForwardGroup:
    """One row per pair (its prompt); both responses are read at the last prompt position."""
    ids, mask = _right_pad([p.prompt_ids for p in pairs], pad_id)
    rows = torch.arange(len(pairs))
    last = torch.tensor([len(p.prompt_ids) - 1 for p in pairs])
    targets = [p.chosen_ids[0] for p in pairs] + [p.rejected_ids[0] for p in pairs]
    outs = slots + [s + n for s in slots]
    return ForwardGroup(ids, mask, rows, last, torch.cat([rows, rows]), torch.tensor(targets), torch.tensor(outs))


def _full_sequence_group(pairs: list[TokenPair], slots: list[int], n: int, pad_id: int) -> ForwardGroup:
    """Rows prompt+chosen for every pair, then prompt+rejected; every response token is scored."""
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    prompts = [p.prompt_ids for p in pairs] * 2
    outs = slots + [s + n for s in slots]
    ids, mask = _right_pad([q + r for q, r in zip(prompts, responses)], pad_id)
    rows, cols, targets, out = [], [], [], []
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        rows += [row] * len(response)
        cols += range(len(prompt) - 1, len(prompt) - 1 + len(response))  # logits at t predict token t+1
        targets += response
        out += [outs[row]] * len(response)
    return ForwardGroup(ids, mask, torch.tensor(rows), torch.tensor(cols), torch.arange(len(rows)),
                        torch.tensor(targets), torch.tensor(out))


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else x


# -- log-probs ----------------------------------------------------------------------


def compute_logps(model, batch: DPOBatch, autocast: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs ``(chosen_N, rejected_N)`` of the policy ``model`` (fp32)."""
    n = batch.n_pairs
    device = batch.ref_chosen_logps_N.device
    out = torch.zeros(2 * n, dtype=torch.float32, device=device)
    for group in batch.groups:
        out = out.index_add(0, group.entry_out_E, _entry_logps(model, group, autocast or _no_autocast))
    return out[:n], out[n:]


def _entry_logps(model, g: ForwardGroup, autocast: Callable) -> torch.Tensor:
    """Log-probs of the group's entries; only the scored positions go through the LM head.

    Assumes ``logits = lm_head(last hidden state)`` as in ``Phi3ForCausalLM`` (no
    logit scaling or soft-capping); the tests compare against ``model(...).logits``.
    """
    with autocast():
        hidden_RLD = model.base_model(input_ids=g.input_ids_RL, attention_mask=g.attention_mask_RL,
                                      use_cache=False).last_hidden_state
        logits_PV = model.get_output_embeddings()(hidden_RLD[g.pos_row_P, g.pos_col_P])
    logp_PV = F.log_softmax(logits_PV.float(), dim=-1)
    return logp_PV[g.entry_pos_E, g.entry_target_E]


def dpo_objective(beta: float, label_smoothing: float = 0.0) -> Callable:
    """The ``Trainer`` objective: mean DPO loss of a ``DPOBatch`` and its reward metrics."""

    def objective(model, batch: DPOBatch, autocast: Callable):
        chosen, rejected = compute_logps(model, batch, autocast)
        losses, chosen_r, rejected_r = dpo_loss(chosen, rejected, batch.ref_chosen_logps_N,
                                                batch.ref_rejected_logps_N, beta, label_smoothing)
        return losses.mean(), reward_metrics(chosen_r, rejected_r)

    return objective


class _no_autocast:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def autocast_for(precision: str, device: str) -> Callable:
    """The same autocast the ``Trainer`` uses, so reference and policy log-probs match at step 0."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return _no_autocast


# -- reference log-probs ------------------------------------------------------------


def precompute_reference_logps(model, pairs: Sequence[TokenPair], batch_size: int = 16, device: str = "cpu",
                               autocast: Callable | None = None, progress: Progress | None = None,
                               pad_id: int = 0) -> list[TokenPair]:
    """Copies of ``pairs`` with ``ref_chosen_logp``/``ref_rejected_logp`` from the frozen ``model``.

    Pairs are batched in order of length (less padding), without gradients, in eval
    mode; ``progress(done, total)`` is called after each batch. Under data parallelism
    rank ``r`` scores batches ``b ≡ r (mod world_size)`` with the (sharded) model and the
    ranks exchange their scores: every rank runs the same number of forwards (a spare
    rank repeats a batch and drops the result), as FSDP's collectives require.
    """
    env = current_env()
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].max_length)
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    mine = batches[env.rank::env.world_size]
    rounds = math.ceil(len(batches) / env.world_size)
    scores: dict[int, tuple[float, float]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k in range(rounds):
                idx = mine[k] if k < len(mine) else batches[-1]  # a spare forward keeps the collectives in step
                batch = collate_pairs([pairs[i] for i in idx], pad_id).to(device)
                chosen, rejected = compute_logps(model, batch, autocast)
                if k < len(mine):
                    scores.update(zip(idx, zip(chosen.tolist(), rejected.tolist())))
                if progress:
                    progress(min((k + 1) * batch_size * env.world_size, len(order)), len(order))
    finally:
        model.train(was_training)
    scores = _merge_ranks(scores)
    return [replace(p, ref_chosen_logp=scores[i][0], ref_rejected_logp=scores[i][1]) for i, p in enumerate(pairs)]


def _merge_ranks(scores: dict) -> dict:
    """The union of every rank's ``{pair index: scores}`` (the dict itself with one rank)."""
    if not current_env().distributed:
        return scores
    import torch.distributed as tdist

    gathered: list = [None] * current_env().world_size
    tdist.all_gather_object(gathered, scores)
    return {k: v for part in gathered for k, v in part.items()}


def pairs_fingerprint(pairs: Sequence[TokenPair]) -> str:
    """A hash of the pairs' ids and tokens: a cached reference is only reused for the same pairs."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.id, p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()


def reference_logps(model, pairs: Sequence[TokenPair], cache: Path, batch_size: int, device: str,
                    autocast: Callable | None, log: Callable[[str], None] = print,
                    progress: Progress | None = None, pad_id: int = 0) -> tuple[list[TokenPair], str]:
    """Pairs with reference log-probs and where they came from: ``pairs``, ``cache`` or ``computed``.

    Reuses log-probs already in the pairs, else ``cache`` when it was written for the
    same pairs (a resumed run), else computes them with ``model`` (which must be the
    starting policy) and writes ``cache``. The cache belongs to the run folder, like
    its checkpoints: a different starting model needs a new folder.
    """
    if all(p.has_reference for p in pairs):
        return list(pairs), "pairs"
    fingerprint = pairs_fingerprint(pairs)
    cached = _read_reference_cache(cache, fingerprint, len(pairs))
    if cached is not None:
        log(f"reference log-probs: reusing {cache}")
        return [replace(p, ref_chosen_logp=c, ref_rejected_logp=r) for p, c, r in zip(pairs, *cached)], "cache"
    log(f"reference log-probs: computing for {len(pairs)} pairs (batch {batch_size})")
    out = precompute_reference_logps(model, pairs, batch_size, device, autocast, progress, pad_id)
    if current_env().is_main:
        _write_reference_cache(cache, fingerprint, out)
    return out, "computed"


def _read_reference_cache(path: Path, fingerprint: str, n: int) -> tuple[list, list] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("fingerprint") != fingerprint or len(data.get("chosen", ())) != n:
        return None
    return data["chosen"], data["rejected"]


def _write_reference_cache(path: Path, fingerprint: str, pairs: Sequence[TokenPair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "n_pairs": len(pairs),
                               "chosen": [p.ref_chosen_logp for p in pairs],
                               "rejected": [p.ref_rejected_logp for p in pairs]}))
    os.replace(tmp, path)


# -- sampler and held-out set ---------------------------------------------------------


def _require_reference(pairs: Sequence[TokenPair], where: str) -> None:
    missing = [p.id for p in pairs if not p.has_reference]
    if missing:
        raise DataError(f"{where}: {len(missing)} pair(s) have no reference log-probs (first: {missing[0]!r}); "
                        "run precompute_reference_logps (train_dpo does) first")


class PairSampler:
    """Endless, shuffled, resumable stream of DPO micro-batches.

    Epoch ``e`` visits the pairs in the order ``permutation(seed, e)``; the stream
    is a pure function of (seed, position), so resuming restores one counter. With
    data parallelism, rank ``r`` takes stream items ``i ≡ r (mod world_size)``.
    """

    def __init__(self, pairs: Sequence[TokenPair], seed: int = 0, pad_id: int = 0, rank: int = 0,
                 world_size: int = 1):
        if not pairs:
            raise ConfigError("DPO: no training pairs left (check the pair files and max_length)")
        _require_reference(pairs, "DPO sampler")
        self.pairs, self.seed, self.pad_id = list(pairs), seed, pad_id
        self.rank, self.world_size = rank, world_size
        self.index = 0
        self._epoch, self._order = -1, np.arange(0)

    def _pair_at(self, i: int) -> TokenPair:
        epoch, pos = divmod(i, len(self.pairs))
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        return self.pairs[self._order[pos]]

    def next_pairs(self, batch_size: int) -> list[TokenPair]:
        """This rank's next ``batch_size`` pairs of the stream."""
        out = []
        while len(out) < batch_size:
            if self.index % self.world_size == self.rank:
                out.append(self._pair_at(self.index))
            self.index += 1
        self.index += -self.index % self.world_size  # finish the round: the state is the global position
        return out

    def next_batch(self, batch_size: int) -> DPOBatch:
        return collate_pairs(self.next_pairs(batch_size), self.pad_id)

    def state_dict(self) -> dict:
        return {"index": self.index, "seed": self.seed, "n_pairs": len(self.pairs), "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["n_pairs"]) != (self.seed, len(self.pairs)):
            raise ConfigError(f"checkpoint was written for {state['n_pairs']} pairs with seed {state['seed']}, "
                              f"this run has {len(self.pairs)} with seed {self.seed}; resume with the same "
                              "pairs and config or use a new output folder")
        self.index = int(state["index"])

    def epochs_so_far(self) -> float:
        return self.index / len(self.pairs)


class PairEvalSet:
    """Held-out pairs the ``Trainer`` evaluates in slices: ``evalset[i:j].to(device)``."""

    def __init__(self, pairs: Sequence[TokenPair], pad_id: int = 0):
        _require_reference(pairs, "DPO held-out set")
        self.pairs, self.pad_id = list(pairs), pad_id

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, sl: slice) -> DPOBatch:
        if not isinstance(sl, slice):
            raise TypeError("PairEvalSet is sliced into batches: evalset[i:j]")
        return collate_pairs(self.pairs[sl], self.pad_id)


# -- preparation and evaluation --------------------------------------------------------


def filter_pairs(pairs: Sequence[TokenPair], max_length: int) -> tuple[list[TokenPair], Counter]:
    """Drop pairs longer than ``max_length`` (prompt + longer response); never truncate them.

    Truncating would cut the response, whose end is what the preference is about
    (and the PTS token lives at the very end), so over-long pairs are dropped and
    counted as ``dropped_over_max_length``.
    """
    kept = [p for p in pairs if p.max_length <= max_length]
    counts = Counter(kept=len(kept))
    if len(kept) < len(pairs):
        counts["dropped_over_max_length"] = len(pairs) - len(kept)
    return kept, counts


def split_pairs(pairs: Sequence[TokenPair], fraction: float, max_pairs: int,
                seed: int) -> tuple[list[TokenPair], list[TokenPair]]:
    """``(train, valid)``: a seeded random ``fraction`` (at most ``max_pairs``) is held out."""
    k = min(max_pairs, int(round(fraction * len(pairs))), max(len(pairs) - 1, 0))
    held = set(np.random.default_rng(seed).permutation(len(pairs))[:k].tolist())
    return ([p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held])


def pair_metrics(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                 ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> dict[str, float]:
    """Pair-weighted loss, reward metrics and ``logp_accuracy`` (policy prefers chosen, ignoring the reference)."""
    losses, chosen_r, rejected_r = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                            beta, label_smoothing)
    return {"loss": losses.mean().item(), **reward_metrics(chosen_r, rejected_r),
            "logp_accuracy": (policy_chosen > policy_rejected).float().mean().item(), "pairs": len(losses)}


@torch.no_grad()
def evaluate_pairs(model, pairs: Sequence[TokenPair], beta: float, label_smoothing: float = 0.0,
                   batch_size: int = 16, device: str = "cpu", autocast: Callable | None = None,
                   pad_id: int = 0) -> dict[str, float]:
    """``pair_metrics`` of ``model`` over all ``pairs`` (which carry reference log-probs)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for start in range(0, len(pairs), batch_size):
            c, r = compute_logps(model, collate_pairs(pairs[start:start + batch_size], pad_id).to(device), autocast)
            chosen.append(c.cpu())
            rejected.append(r.cpu())
    finally:
        model.train(was_training)
    return pair_metrics(torch.cat(chosen), torch.cat(rejected), *_ref_tensors(pairs), beta, label_smoothing)


def reference_metrics(pairs: Sequence[TokenPair], beta: float, label_smoothing: float = 0.0) -> dict[str, float]:
    """Metrics of the starting policy, which IS the reference: rewards are 0 and the loss is log 2."""
    ref_chosen, ref_rejected = _ref_tensors(pairs)
    return pair_metrics(ref_chosen, ref_rejected, ref_chosen, ref_rejected, beta, label_smoothing)


def _ref_tensors(pairs: Sequence[TokenPair]) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor([p.ref_chosen_logp for p in pairs], dtype=torch.float32),
            torch.tensor([p.ref_rejected_logp for p in pairs], dtype=torch.float32))


# -- the whole stage ------------------------------------------------------------------------


def train_dpo(model, pairs: Sequence[TokenPair], config: DPOConfig, out_dir: str | Path, *,
              valid_pairs: Sequence[TokenPair] | None = None, device: str = "cpu",
              log: Callable[[str], None] = print, progress: Progress | None = None,
              stop_after: int | None = None, parallel=None) -> dict:
    """Run DPO on ``pairs`` from the starting policy ``model`` (trained in place); return a summary.

    Steps: drop over-long pairs, hold out ``valid_fraction`` (unless ``valid_pairs``
    is given), get reference log-probs (from the pairs, the run's cache, or one
    pass of ``model`` before training), then run the shared ``Trainer`` with
    checkpoints and exact resume in ``out_dir``. ``stop_after`` simulates a crash
    (tests). The summary has steps, pair counts (with drop reasons), epochs, the
    final training loss, and held-out metrics before and after training.
    """
    out_dir = Path(out_dir)
    _check_model_fits(model, [*pairs, *(valid_pairs or [])], config)
    train, counts = filter_pairs(pairs, config.max_length)
    if valid_pairs is None:
        train, valid = split_pairs(train, config.valid_fraction, config.max_valid_pairs, config.seed)
    else:
        valid, valid_counts = filter_pairs(valid_pairs, config.max_length)
        counts.update({f"valid_{k}": v for k, v in valid_counts.items() if k != "kept"})
    log(f"DPO pairs: {format_counts(counts)}; train {len(train)}, held out {len(valid)} "
        f"({sum(p.single_token for p in train)} single-token)")
    env = current_env()
    spec = config.train_spec(len(train), device, env.world_size)
    write_json(out_dir / "dpo_config.json", {"config": config.model_dump(), "train_spec": asdict(spec)})
    pad_id = _pad_id(model)
    # Shard first: the reference pass then needs no whole model per GPU, and each rank scores 1/world of it.
    model = parallelize(model, parallel or ParallelConfig(), spec.precision, device)
    autocast = _no_autocast if handles_precision(model) else autocast_for(spec.precision, device)
    with_ref, source = reference_logps(model, [*train, *valid], out_dir / REFERENCE_CACHE, config.ref_batch_size,
                                       device, autocast, log, progress, pad_id)
    train, valid = with_ref[:len(train)], with_ref[len(train):]
    sampler = PairSampler(train, config.seed, pad_id, rank=env.rank, world_size=env.world_size)
    trainer = Trainer(model, spec, sampler, out_dir, eval_sets={"pairs": PairEvalSet(valid, pad_id)} if valid else {},
                      device=device, objective=dpo_objective(config.beta, config.label_smoothing), log=log,
                      stop_after=stop_after, parallel=parallel)
    torch.manual_seed(config.seed)
    summary = trainer.fit()
    return {**summary, "pairs": {**counts, "train": len(train), "valid": len(valid)},
            "epochs": sampler.epochs_so_far(), "reference": source, "precision": spec.precision,
            "ranks": env.world_size, "sharding": sharding_of(trainer.model),
            **_valid_before_after(model, valid, config, spec, device, autocast, pad_id)}


def _valid_before_after(model, valid, config: DPOConfig, spec: TrainSpec, device, autocast, pad_id) -> dict:
    if not valid:
        return {"valid_before": None, "valid_after": None}
    before = reference_metrics(valid, config.beta, config.label_smoothing)
    after = evaluate_pairs(model, valid, config.beta, config.label_smoothing, spec.micro_batch_size, device,
                           autocast, pad_id)
    return {"valid_before": before, "valid_after": after}


def _check_model_fits(model, pairs: Sequence[TokenPair], config: DPOConfig) -> None:
    cfg = model.config
    if config.max_length > cfg.max_position_embeddings:
        raise ConfigError(f"dpo.max_length={config.max_length} exceeds the model's context "
                          f"({cfg.max_position_embeddings}); lower max_length")
    for p in pairs:
        top = max(max(p.prompt_ids), max(p.chosen_ids), max(p.rejected_ids))
        if top >= cfg.vocab_size:
            raise DataError(f"pair {p.id!r}: token id {top} is outside the model's vocabulary "
                            f"({cfg.vocab_size}); were the pairs made with another tokenizer?")


def _pad_id(model) -> int:
    """Any valid id works (padding is masked and right-aligned); the model's pad id if it has one."""
    pad = getattr(model.config, "pad_token_id", None)
    return int(pad) if pad is not None else 0
