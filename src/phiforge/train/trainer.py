"""The training loop shared by pretraining and midtraining (and later SFT / DPO).

One ``Trainer`` owns the step loop: gradient accumulation, clipping, the LR
schedule, periodic held-out loss, one log line per step, a metrics JSONL, and
checkpoints with exact resume. *What* is optimised is the ``objective``
(``causal_lm_loss`` here; masked SFT and DPO in ``phiforge.posttrain``), and
*which* examples come from the ``sampler``. A batch is anything with ``.to(device)``
(a packed tensor, or a dataclass for SFT / DPO that also reports ``n_tokens``); an
objective returns a loss, or ``(loss, metrics)`` whose metrics are logged with it.

Optimiser: AdamW with weight decay 0.1 on matrices (not on norm gains) and linear
warm-up then linear decay (Phi-4 report §3). On CPUs we train in fp32 (bf16
autocast measured ~30x slower on 2-core CPUs); on GPUs with bf16 support we
autocast to bf16 (or, under FSDP, let its mixed-precision policy cast).

Data parallelism (``phiforge.train.distributed``): under torchrun every rank runs
this same loop on its own share of the sampler's stream; the model is sharded
(FSDP2) or replicated, gradients are averaged over ranks, and the logged loss,
tokens and metrics are reduced over ranks once per step, so one optimizer step
sees ``micro_batch_size x grad_accum x world_size`` sequences and logs the same
numbers as one process with that batch. Rank 0 alone writes metrics and logs;
checkpoints are written by all ranks together.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from phiforge.errors import ConfigError
from phiforge.train import checkpoint as ckpt
from phiforge.train import distributed as dist
from phiforge.train.schedule import linear_warmup_linear_decay


@dataclass(kw_only=True)
class TrainSpec:
    """Resolved optimisation settings for one training stage (see the recipe docs for units)."""

    max_steps: int
    micro_batch_size: int
    grad_accum: int = 1
    seq_len: int
    lr: float
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    precision: str = "fp32"  # fp32 | bf16 (resolved, not "auto")


def causal_lm_loss(model, batch: torch.Tensor, autocast: Callable) -> torch.Tensor:
    """Mean next-token cross-entropy over a packed batch of ``seq_len + 1`` tokens."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    with autocast():
        logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


def build_optimizer(model, spec: TrainSpec) -> torch.optim.AdamW:
    """AdamW with decay on ≥2-D weights only (norm gains are not decayed)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": spec.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps)


class Trainer:
    """Runs ``spec.max_steps`` optimizer steps with resume from ``out_dir/checkpoints``."""

    def __init__(self, model, spec: TrainSpec, sampler, out_dir: Path,
                 eval_sets: dict[str, torch.Tensor] | None = None, device: str = "cpu",
                 objective: Callable = causal_lm_loss, log: Callable[[str], None] = print,
                 stop_after: int | None = None, parallel: dist.ParallelConfig | None = None):
        self.env = dist.current_env()
        _check_sampler_ranks(sampler, self.env)
        self.model = dist.parallelize(model, parallel or dist.ParallelConfig(), spec.precision, device)
        self.spec, self.sampler = spec, sampler
        self.out_dir, self.device, self.objective = Path(out_dir), device, objective
        self.log = log if self.env.is_main else _silent
        self.eval_sets = eval_sets or {}
        self.optimizer = build_optimizer(self.model, spec)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.stop_after = stop_after  # for tests: simulate a crash after this many steps
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0

    # -- public -----------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``max_steps`` (resuming if a checkpoint exists); return summary stats."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._maybe_resume()
        self.model.train()
        interrupted = _InterruptFlag()
        with interrupted:
            while self.step < self.spec.max_steps:
                stop = self._one_step(interrupted)
                if self._should(self.spec.eval_every) or self.step == self.spec.max_steps:
                    self._evaluate()
                if self._should(self.spec.checkpoint_every) or stop:
                    self._save()
                if stop:
                    raise KeyboardInterrupt(f"interrupted at step {self.step}; rerun to resume")
                if self.stop_after is not None and self.step >= self.stop_after:
                    return self._summary()
        return self._summary()

    # -- steps ------------------------------------------------------------
    def _one_step(self, interrupted: "_InterruptFlag") -> bool:
        """One optimizer step; returns whether any rank was asked to stop (all ranks then stop together).

        The flag is read after the step's work, so a signal during step N stops every rank after step N.
        """
        t0 = time.perf_counter()
        lr = linear_warmup_linear_decay(self.step, self.spec.lr, self.spec.warmup_steps,
                                        self.spec.max_steps, self.spec.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum, extras, tokens = self._accumulate()
        dist.all_reduce_gradients(self.model)
        grad_norm = dist.clip_grad_norm(self.model, self.spec.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        names = sorted(extras)
        reduced = dist.all_reduce_sum([loss_sum, tokens, float(interrupted.flag), *(extras[k] for k in names)],
                                      self.device)
        world = self.env.world_size
        loss_sum, tokens, stop = reduced[0] / world, int(reduced[1]), reduced[2] > 0
        extras = {k: v / world for k, v in zip(names, reduced[3:])}
        dt = time.perf_counter() - t0
        self.elapsed += dt
        self.tokens_seen += tokens
        self._record({"kind": "train", "step": self.step, "loss": loss_sum / self.spec.grad_accum, "lr": lr,
                      "grad_norm": grad_norm, "tokens": self.tokens_seen,
                      "tokens_per_s": tokens / dt, "elapsed_s": round(self.elapsed, 3), **extras})
        return stop

    def _accumulate(self) -> tuple[float, dict, int]:
        """Forward/backward over ``grad_accum`` micro-batches: summed loss, mean metrics, tokens.

        The loss stays on the device until the step ends: one host sync per step, not per micro-batch.
        """
        loss_sum, extras, tokens = torch.zeros((), device=self.device), {}, 0
        for i in range(self.spec.grad_accum):
            batch = self.sampler.next_batch(self.spec.micro_batch_size).to(self.device)
            with dist.accumulating(self.model, sync=i == self.spec.grad_accum - 1):
                loss, metrics = _split(self.objective(self.model, batch, self._autocast))
                (loss / self.spec.grad_accum).backward()
            loss_sum += loss.detach().float()
            tokens += batch_tokens(batch, self.spec)
            for k, v in metrics.items():
                extras[k] = extras.get(k, 0.0) + float(v) / self.spec.grad_accum
        return loss_sum.item(), extras, tokens

    def _autocast(self):
        if self.spec.precision == "bf16" and not dist.handles_precision(self.model):
            return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)
        return _nullcontext()

    @torch.no_grad()
    def _evaluate(self) -> None:
        if not self.eval_sets:
            return
        self.model.eval()
        losses, extras = {}, {}
        for name, seqs in self.eval_sets.items():
            vals, sums = [], {}
            for i in range(0, len(seqs), self.spec.micro_batch_size):
                loss, metrics = _split(self.objective(self.model, seqs[i:i + self.spec.micro_batch_size].to(self.device),
                                                      self._autocast))
                vals.append(loss.item())
                for k, v in metrics.items():
                    sums.setdefault(k, []).append(float(v))
            losses[name] = sum(vals) / len(vals)
            extras.update({f"{name}/{k}": sum(v) / len(v) for k, v in sums.items()})
        self.model.train()
        self._record({"kind": "eval", "step": self.step, "val_loss": losses, **({"val_metrics": extras} if extras else {})})

    # -- logging ----------------------------------------------------------
    def _record(self, row: dict) -> None:
        if not self.env.is_main:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if row["kind"] == "eval":
            text = " ".join(f"{k} {v:.4f}" for k, v in row["val_loss"].items())
            self.log(f"step {row['step']:>6}/{self.spec.max_steps} | val_loss {text}")
        elif self._should(self.spec.log_every) or row["step"] in (1, self.spec.max_steps):
            self.log(f"step {row['step']:>6}/{self.spec.max_steps} | loss {row['loss']:.4f} | lr {row['lr']:.2e} "
                     f"| tok/s {row['tokens_per_s']:,.0f} | elapsed {row['elapsed_s']:.1f}s")

    def _should(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    # -- checkpoints ------------------------------------------------------
    def _save(self) -> None:
        state = {"sampler": self.sampler.state_dict(), "tokens_seen": self.tokens_seen,
                 "elapsed_s": self.elapsed, "spec": asdict(self.spec)}
        ckpt.save_training_checkpoint(self.ckpt_dir, self.step, self.model, self.optimizer, state,
                                      self.spec.keep_checkpoints)

    def _maybe_resume(self) -> None:
        found = ckpt.list_checkpoints(self.ckpt_dir)
        dist.barrier()  # nobody may prune or add a checkpoint before every rank has listed them
        if not found:
            if self.env.is_main:
                self.metrics_path.unlink(missing_ok=True)
            return
        state = ckpt.load_training_checkpoint(found[-1], self.model, self.optimizer)
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.tokens_seen, self.elapsed = state["step"], state["tokens_seen"], state["elapsed_s"]
        if self.env.is_main:
            _truncate_metrics(self.metrics_path, self.step)
        saved_world = state["sampler"].get("world_size", 1)
        where = f" (written by {saved_world} ranks, resumed on {self.env.world_size})" \
            if saved_world != self.env.world_size else ""
        self.log(f"resumed from {found[-1]} (step {self.step}/{self.spec.max_steps}){where}")

    def _summary(self) -> dict:
        rows = read_metrics(self.metrics_path)
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval"]
        return {"steps": self.step, "tokens": self.tokens_seen, "train_seconds": round(self.elapsed, 2),
                "tokens_per_s": self.tokens_seen / self.elapsed if self.elapsed else math.nan,
                "final_loss": train[-1]["loss"] if train else None,
                "final_val_loss": evals[-1]["val_loss"] if evals else None}


def _check_sampler_ranks(sampler, env: dist.DistEnv) -> None:
    """Each rank must read its own share of the stream, or ranks would train on the same data."""
    ranks = (getattr(sampler, "rank", 0), getattr(sampler, "world_size", 1))
    if ranks != (env.rank, env.world_size):
        raise ConfigError(f"the sampler reads as rank {ranks[0]} of {ranks[1]}, but this process is rank "
                          f"{env.rank} of {env.world_size}: build samplers with rank/world_size from "
                          "phiforge.train.distributed.current_env()")


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _split(out) -> tuple[torch.Tensor, dict]:
    """An objective returns a loss, or ``(loss, metrics)`` (e.g. DPO reward accuracy) to log with it."""
    if isinstance(out, tuple):
        return out[0], dict(out[1])
    return out, {}


def batch_tokens(batch, spec: TrainSpec) -> int:
    """Tokens in a micro-batch: ``batch.n_tokens`` when the batch knows (SFT, DPO), else the packed size."""
    n = getattr(batch, "n_tokens", None)
    return int(n) if n is not None else spec.micro_batch_size * spec.seq_len


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows written after the checkpoint we resume from."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _InterruptFlag:
    """Turn the first SIGINT/SIGTERM into "checkpoint after this step, then stop"."""

    def __init__(self):
        self.flag = False
        self._old: dict = {}

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.flag:  # second signal: stop now
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False
