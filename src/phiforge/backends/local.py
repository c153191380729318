"""Local backend: any Hugging Face causal LM, on CPU or GPU, with our own decoding loop.

We do not call ``model.generate``: the recipe needs three things it does not give
cleanly, so the loop here drives ``model(input_ids, attention_mask, position_ids,
cache, use_cache=True)`` step by step itself:

* **Raw log-probs.** Every sampled token carries the model's *raw* next-token
  log-prob: ``log_softmax`` of the fp32 logits at temperature 1, before any
  temperature or nucleus (top-p) filtering. That is the quantity Pivotal Token
  Search and DPO reference scores need (Phi-4 report §4.3), and it equals what
  ``score`` returns for the same tokens.
* **Prefix reuse.** Each distinct prompt is run through the model once and its KV
  cache serves all its ``n`` rollouts (PTS draws many rollouts from the same
  prefix, Phi-4 report §4.3 (PTS)): shared in place by a shared-prefix attention
  for standard architectures, else copied into each row. ``sample_continuations``
  exposes this for token-id prefixes; ``sample`` uses the same path for every prompt.
* **Exact control of stopping**: EOS, ``<|im_end|>`` and stop strings, with the
  stop string cut from the text but the token that completed it kept in the ids.

Batches are left-padded (attention mask plus explicit position ids, so a padded
prompt sees exactly the positions it would see alone). Sampling is reproducible
*per row*: sample ``k`` of a prompt draws its random numbers from a
``torch.Generator`` seeded by ``(params.seed, prompt token ids, k)``, so results do
not depend on which other prompts share the batch, on the batch size, or on
whether prefixes are shared. Identical prompts in one call are merged (one prefix
pass) and numbered on, so they still get distinct samples.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import functools
import hashlib
import inspect
import operator
import os
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from phiforge.backends.base import Completion, Message, Prompt, SampleResult, SamplingParams, Usage
from phiforge.errors import CheckpointError, ConfigError

Progress = Callable[[int, int], None]

# fp32 logit elements materialized per ``score`` forward (1 GiB); bounds memory for
# 100K-token vocabularies, where each scored position costs 400 KB of logits.
SCORE_LOGIT_BUDGET = 2**28

IM_END_TOKEN = "<|im_end|>"


@dataclass
class _Row:
    """One rollout: where its completion goes and which random stream it uses."""

    prompt: int  # index of the prompt in the call
    slot: int  # index of this completion among the prompt's n
    key: int  # sample number of this prompt's token ids within the call (seeds the stream)


@dataclass
class _Job:
    """One prefix forward pass and the rollouts that continue from it."""

    ids: list[int]
    rows: list[_Row] = field(default_factory=list)


@dataclass
class _Prefill:
    """A left-padded prefix batch after its forward pass."""

    cache: Any  # transformers Cache, one batch row per job
    mask: Any  # [jobs, width] attention mask (0 on left padding)
    logits: Any  # [jobs, vocab] next-token logits after each prefix
    lengths: list[int]  # real (unpadded) length of each prefix


@dataclass
class _Live:
    """Per-row tensors of the rollouts still decoding, compacted together when rows finish."""

    active: Any  # [rows] index of each live row in the decode batch
    positions: Any  # [rows] position id of the token each row feeds next
    mask: Any  # [rows, length] attention mask, or None under shared-prefix attention
    uniforms: Any  # [rows, max_tokens] random numbers, or None when greedy

    def keep(self, index) -> None:
        for name in ("active", "positions", "mask", "uniforms"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, index))


class LocalBackend:
    """A ``Backend`` over an in-process transformers causal LM (Phi-4 or any other).

    ``batch_size`` bounds the rows decoded together (rollouts, not prompts) and the
    prefixes run through the model in one forward. ``share_prefixes=False`` gives
    every rollout its own prefix pass, the naive path ``model.generate`` takes with
    ``num_return_sequences``; it exists for benchmarks and gives the same samples.

    ``shared_attention`` (default: on for ``SHARED_ATTENTION_MODELS``, architectures
    with plain attention) keeps ONE copy of each prefix's KV cache for all its
    rollouts instead of copying it into every row: at each decode step the rows of
    a prefix attend to it with one matmul, and to their own generated tokens
    separately, under one softmax. Same results to float rounding, less memory
    traffic, and for many rollouts of a long prefix far less KV memory (Phi-4
    report §4.3 (PTS)). ``False`` forces the copying path.

    ``stop_ids`` (a set, editable) holds the token ids that end a completion: the
    tokenizer's and generation config's EOS, plus ``<|im_end|>`` when the vocabulary
    has it. ``progress(done, total)`` is called after each decode batch with rollouts
    finished / rollouts asked for.

    Usage accounting: ``prompt_tokens`` counts each prompt once (not once per sample),
    ``completion_tokens`` all sampled tokens, ``calls`` one per prompt (as
    ``HTTPBackend`` counts requests); ``score`` adds its scored sequences' tokens as
    prompt tokens and one call per pair.
    """

    def __init__(self, model, tokenizer, device: str = "cpu", batch_size: int = 32, name: str = "local", *,
                 share_prefixes: bool = True, shared_attention: bool | None = None,
                 progress: Progress | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"LocalBackend.batch_size: {batch_size!r} must be an integer >= 1")
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.name = name
        self.share_prefixes = share_prefixes
        if shared_attention is None:
            shared_attention = share_prefixes and _standard_attention(model.config)
        self.shared_attention = shared_attention
        self.progress = progress
        self.stop_ids = _stop_token_ids(model, tokenizer)
        self.pad_id = _pad_id(tokenizer, self.stop_ids)
        self.vocab_size = model.get_input_embeddings().weight.shape[0]
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        params = inspect.signature(model.forward).parameters
        # transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40).
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_logits = "logits_to_keep" in params
        self._usage = Usage()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", dtype=None, **kwargs) -> "LocalBackend":
        """Load a model folder and the tokenizer saved in it (any ``AutoModelForCausalLM`` architecture).

        ``device="auto"`` picks CUDA when available, else CPU. ``dtype=None`` means
        float32 on CPU and bfloat16 (float16 without bf16 support) on GPU; pass a
        ``torch.dtype``, a name such as ``"bfloat16"``, or ``"auto"`` for the checkpoint's.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: not a model folder (no config.json); point to a stage's model/ "
                                  "folder or a downloaded Hugging Face model directory")
        device = _resolve_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: no usable tokenizer in the model folder ({e}); save the tokenizer "
                                  "next to the weights (export_hf_model does)") from e
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_resolve_dtype(dtype, device),
                                                         local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot load as a causal language model ({e}); point to a folder "
                                  "with config.json and weights of a decoder-only model") from e
        kwargs.setdefault("name", f"local:{path.name}")
        return cls(model, tokenizer, device=device, **kwargs)

    @property
    def usage(self) -> Usage:
        """Totals over the backend's lifetime (``sample``, ``sample_continuations`` and ``score``)."""
        return self._usage

    # -- prompts --------------------------------------------------------------
    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of ``messages`` in the tokenizer's chat template (Phi-4 format for our tokenizers)."""
        from phiforge.tokenize.chat import render_conversation, validate_messages

        messages = validate_messages(messages)
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                                     add_generation_prompt=add_generation_prompt)
            return [int(t) for t in ids]
        return render_conversation(self.tokenizer, messages, add_generation_prompt=add_generation_prompt)[0]

    def _prompt_ids(self, index: int, prompt: Prompt) -> list[int]:
        """Token ids for one prompt: text is encoded without special tokens, ids are used as given."""
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        elif _is_messages(prompt):
            ids = self.chat_prompt(prompt)
        else:
            ids = _as_ids(index, prompt)
        return self._checked_ids(index, ids)

    def _checked_ids(self, index: int, ids: list[int]) -> list[int]:
        if not ids:
            raise ConfigError(f"prompt {index}: is empty (no tokens); give at least one token to condition on")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ConfigError(f"prompt {index}: token id {bad[0]} is outside the model's vocabulary "
                              f"(0..{self.vocab_size - 1}); were these ids made with another tokenizer?")
        if self.max_positions and len(ids) >= self.max_positions:
            raise ConfigError(f"prompt {index}: {len(ids)} tokens leave no room in the model's "
                              f"{self.max_positions}-token context; shorten the prompt")
        return ids

    # -- sampling -------------------------------------------------------------
    def sample(self, prompts: Sequence[Prompt], params: SamplingParams,
               progress: Progress | None = None) -> SampleResult:
        """``params.n`` completions per prompt; text, chat and token-id prompts all reuse their prefix pass."""
        t0 = time.perf_counter()
        ids = [self._prompt_ids(i, p) for i, p in enumerate(prompts)]
        return self._sample_ids(ids, params, progress, t0)

    def sample_continuations(self, prefixes: Sequence[Sequence[int]], n: int, params: SamplingParams,
                             progress: Progress | None = None) -> SampleResult:
        """``n`` rollouts from each token-id prefix; each distinct prefix runs through the model once.

        This is the PTS primitive (Phi-4 report §4.3 (PTS)): estimating p(success | prefix)
        takes many rollouts of one prefix, so the prefix's KV cache is computed once and
        copied to its rollouts, and prefixes of different lengths share a left-padded batch.
        ``n`` overrides ``params.n``.
        """
        t0 = time.perf_counter()
        ids = [self._checked_ids(i, _as_ids(i, p)) for i, p in enumerate(prefixes)]
        return self._sample_ids(ids, dataclasses.replace(params, n=n), progress, t0)

    def _sample_ids(self, prompts: list[list[int]], params: SamplingParams, progress: Progress | None,
                    t0: float) -> SampleResult:
        import torch

        jobs = self._jobs(prompts, params.n)
        out: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        base_seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        total, done = len(prompts) * params.n, 0
        report = progress or self.progress
        with self._inference():
            for chunk in self._chunks(jobs):
                pre = self._prefill([job.ids for job in chunk])
                pairs = [(j, row) for j, job in enumerate(chunk) for row in job.rows]
                for start in range(0, len(pairs), self.batch_size):
                    part = pairs[start:start + self.batch_size]
                    index = torch.tensor([j for j, _ in part], device=self.device)
                    seeds = [_row_seed(base_seed, chunk[j].ids, row.key) for j, row in part]
                    completions = self._decode(pre, index, seeds, params)
                    for (_, row), completion in zip(part, completions):
                        out[row.prompt][row.slot] = completion
                    done += len(part)
                    if report is not None:
                        report(done, total)
        usage = Usage(prompt_tokens=sum(map(len, prompts)), calls=len(prompts),
                      completion_tokens=sum(len(c.token_ids) for cs in out for c in cs),
                      seconds=time.perf_counter() - t0)
        self._usage.add(usage)
        return SampleResult(out, usage)

    def _jobs(self, prompts: list[list[int]], n: int) -> list[_Job]:
        """Group rollouts by prefix: one job per distinct prompt (or per rollout without sharing).

        Repeats of the same ids are merged and their samples numbered on (``key``), so
        a repeated prompt costs one prefix pass yet still gets distinct samples.
        Jobs come longest first, so batched prefixes have similar lengths (less padding).
        """
        by_ids: dict[tuple[int, ...], _Job] = {}
        jobs: list[_Job] = []
        for p, ids in enumerate(prompts):
            job = by_ids.setdefault(tuple(ids), _Job(ids))
            first_key = len(job.rows)
            job.rows.extend(_Row(p, s, first_key + s) for s in range(n))
        for job in by_ids.values():
            jobs.extend([job] if self.share_prefixes else [_Job(job.ids, [row]) for row in job.rows])
        return sorted(jobs, key=lambda job: -len(job.ids))

    def _chunks(self, jobs: list[_Job]) -> Iterator[list[_Job]]:
        """Consecutive jobs whose rollouts fit one decode batch (a job with more gets a chunk alone)."""
        chunk, rows = [], 0
        for job in jobs:
            if chunk and rows + len(job.rows) > self.batch_size:
                yield chunk
                chunk, rows = [], 0
            chunk.append(job)
            rows += len(job.rows)
        if chunk:
            yield chunk

    def _prefill(self, prefixes: list[list[int]]) -> _Prefill:
        """One left-padded forward over the prefixes; keeps the KV cache and the last logits."""
        import torch

        width = max(map(len, prefixes))
        ids = torch.full((len(prefixes), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for b, prefix in enumerate(prefixes):
            ids[b, width - len(prefix):] = torch.tensor(prefix)
            mask[b, width - len(prefix):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(ids, mask, positions, cache=None, last_only=True)
        return _Prefill(cache=_output_cache(out), mask=mask, logits=out.logits[:, -1],
                        lengths=[len(p) for p in prefixes])

    def _forward(self, ids, mask, positions, cache, last_only: bool):
        """The model call; ``cache=None`` lets the model build its own cache type (hybrid/sliding models)."""
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        if cache is not None:
            kwargs[self._cache_arg] = cache
        if last_only and self._keep_logits:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs)

    def _decode(self, pre: _Prefill, index, seeds: list[int], params: SamplingParams) -> list[Completion]:
        """Decode one batch of rollouts, row ``r`` continuing prefix ``index[r]`` of ``pre``.

        The prefix KV cache is never recomputed: rollouts either share it in place
        (``shared_attention``) or get row copies of it; ``pre`` stays intact for the
        next batch of rollouts of the same prefixes. Finished rows are dropped from
        the batch at once, so they cost nothing afterwards.
        """
        import torch

        rows = _RowState(len(seeds), params.max_tokens, params.stop)
        shared = self._use_shared_attention(pre, index)
        if shared:
            cache = _shared_prefix_cache(pre, index)
        else:  # every prefix once, in order: alias instead of copying
            identity = index.tolist() == list(range(len(pre.lengths)))
            cache = _select_cache(pre.cache, None if identity else index)
        live = _Live(active=torch.arange(len(seeds), device=self.device),
                     positions=torch.tensor([pre.lengths[j] for j in index.tolist()], device=self.device),
                     mask=None if shared else pre.mask.index_select(0, index),  # shared attention masks itself
                     uniforms=_uniforms(seeds, params, self.device))
        logits = pre.logits.index_select(0, index)
        with self._attention(cache if shared else None):
            for step in range(params.max_tokens):
                u = None if live.uniforms is None else live.uniforms[:, step]
                tokens, logprobs = _pick(logits, params.temperature, params.top_p, u)
                finished = self._advance(rows, live, tokens.tolist(), logprobs.tolist(), step)
                if finished.all():
                    break
                if finished.any():
                    keep = (~finished).nonzero()[:, 0].to(self.device)
                    cache.batch_select_indices(keep)
                    live.keep(keep)
                    tokens = tokens.index_select(0, keep)
                logits = self._step(cache, live, tokens)
        return [rows.completion(r, self.tokenizer, params) for r in range(len(seeds))]

    def _step(self, cache, live: "_Live", tokens):
        """Feed one token per live row; returns the next-token logits."""
        import torch

        if live.mask is not None:
            live.mask = torch.cat([live.mask, live.mask.new_ones((live.mask.shape[0], 1))], dim=1)
        out = self._forward(tokens[:, None], live.mask, live.positions[:, None], cache, last_only=True)
        live.positions = live.positions + 1
        return out.logits[:, -1]

    def _use_shared_attention(self, pre: _Prefill, index) -> bool:
        """Share the prefix KV in place when enabled, worthwhile (a prefix has several rows) and plain."""
        if not self.shared_attention or len(set(index.tolist())) == len(index):
            return False
        return all(_block_layer().handles(layer) for layer in pre.cache.layers)

    @contextlib.contextmanager
    def _attention(self, shared_cache):
        """Route the model's attention to shared-prefix attention while ``shared_cache`` decodes."""
        if shared_cache is None:
            yield
            return
        config = self.model.config
        previous = config._attn_implementation
        token = _ACTIVE_SHARED_CACHE.set(shared_cache)
        config._attn_implementation = _register_shared_attention()
        try:
            yield
        finally:
            config._attn_implementation = previous
            _ACTIVE_SHARED_CACHE.reset(token)

    def _advance(self, rows: "_RowState", live: "_Live", tokens: list[int], logprobs: list[float],
                 step: int) -> Any:
        """Append one token per live row; returns a bool tensor: which rows finished now."""
        import torch

        active = live.active.tolist()
        at_limit = self.max_positions is not None and int(live.positions.max()) + 1 >= self.max_positions
        for b, (r, token, lp) in enumerate(zip(active, tokens, logprobs)):
            rows.tokens[r].append(token)
            rows.logprobs[r].append(lp)
            if token in self.stop_ids:
                rows.reason[r] = "eos"
            elif step + 1 == rows.max_tokens or (at_limit and int(live.positions[b]) + 1 >= self.max_positions):
                rows.reason[r] = "length"
        hits = rows.stop_string_hits([r for r in active if rows.reason[r] != "eos"], self.tokenizer)
        for r in hits:
            rows.reason[r] = "stop"
        return torch.tensor([rows.reason[r] is not None for r in active], dtype=torch.bool)

    # -- scoring --------------------------------------------------------------
    def score(self, prompt_ids: Sequence[Sequence[int]],
              continuation_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """Exact ``log p(continuation token | prompt, earlier continuation)`` per token, from fp32 logits.

        Sequences are right-padded and batched by length; only the logits from the
        shortest prompt's end onward are kept, bounded by ``SCORE_LOGIT_BUDGET``.
        """
        t0 = time.perf_counter()
        if len(prompt_ids) != len(continuation_ids):
            raise ConfigError(f"score: {len(prompt_ids)} prompts but {len(continuation_ids)} continuations; "
                              "give one continuation per prompt")
        pairs = [self._score_pair(i, p, c) for i, (p, c) in enumerate(zip(prompt_ids, continuation_ids))]
        results: list[list[float]] = [[] for _ in pairs]
        groups = _single_token_groups(pairs)
        order = sorted((i for i, (_, c) in enumerate(pairs) if c and i in groups),
                       key=lambda i: -sum(map(len, pairs[i])))
        with self._inference():
            for batch in self._score_batches(order, pairs):
                for i, values in zip(batch, self._score_batch([pairs[i] for i in batch],
                                                              [groups[i] for i in batch])):
                    for member, value in values:
                        results[member] = value
        self._usage.add(Usage(prompt_tokens=sum(len(p) + len(c) for p, c in pairs), calls=len(pairs),
                              seconds=time.perf_counter() - t0))
        return results

    def _score_pair(self, i: int, prompt, continuation) -> tuple[list[int], list[int]]:
        prompt = self._checked_ids(i, _as_ids(i, prompt))
        continuation = _as_ids(i, continuation, allow_empty=True)
        bad = [t for t in continuation if not 0 <= t < self.vocab_size]
        if bad:
            raise ConfigError(f"continuation {i}: token id {bad[0]} is outside the model's vocabulary "
                              f"(0..{self.vocab_size - 1}); were these ids made with another tokenizer?")
        if self.max_positions and len(prompt) + len(continuation) > self.max_positions:
            raise ConfigError(f"score pair {i}: {len(prompt) + len(continuation)} tokens exceed the model's "
                              f"{self.max_positions}-token context; shorten the prompt or continuation")
        return prompt, continuation

    def _score_batches(self, order: list[int], pairs: list[tuple[list[int], list[int]]]) -> Iterator[list[int]]:
        """Batches of at most ``batch_size`` pairs whose kept fp32 logits fit the budget."""
        batch: list[int] = []
        width = shortest = 0  # longest sequence and shortest prompt in ``batch``
        for i in order:
            total, prompt = sum(map(len, pairs[i])), len(pairs[i][0])
            kept = max(width, total) - min(shortest or prompt, prompt) + 1
            if batch and (len(batch) == self.batch_size
                          or (len(batch) + 1) * kept * self.vocab_size > SCORE_LOGIT_BUDGET):
                yield batch
                batch, width, shortest = [], 0, 0
            batch.append(i)
            width, shortest = max(width, total), min(shortest or prompt, prompt)
        if batch:
            yield batch

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]],
                     members: list[list[tuple[int, int]]]) -> list[list[tuple[int, list[float]]]]:
        """Log-probs per pair; a pair standing for a group of single-token continuations of the same
        prompt (``members``: (result index, token)) answers them all from one next-token distribution."""
        import torch

        width = max(len(p) + len(c) for p, c in pairs)
        ids = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for b, (p, c) in enumerate(pairs):
            ids[b, :len(p) + len(c)] = torch.tensor(p + c)
            mask[b, :len(p) + len(c)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = torch.arange(width, device=self.device).expand(len(pairs), width)
        first = min(len(p) for p, _ in pairs) - 1  # logits at position q predict token q + 1
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        if self._keep_logits:
            kwargs["logits_to_keep"] = width - first
        logits = self.model(**kwargs).logits
        logits = logits[:, -(width - first):]
        out = []
        for b, (p, c) in enumerate(pairs):
            rows = logits[b, len(p) - 1 - first:len(p) + len(c) - 1 - first]
            if len(members[b]) > 1:  # one distribution, several candidate tokens
                tokens = torch.tensor([t for _, t in members[b]], device=self.device)
                values = _token_logprobs(rows[:1].expand(len(tokens), -1), tokens).tolist()
                out.append([(m, [v]) for (m, _), v in zip(members[b], values)])
            else:
                target = torch.tensor(c, device=self.device)
                out.append([(members[b][0][0], _token_logprobs(rows, target).tolist())])
        return out

    # -- helpers --------------------------------------------------------------
    @contextlib.contextmanager
    def _inference(self):
        """Eval mode and no autograd for one call, restoring the model's training flag after."""
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)


class _RowState:
    """Per-rollout token lists, log-probs and finish reasons of one decode batch."""

    def __init__(self, count: int, max_tokens: int, stops: Sequence[str]):
        self.tokens: list[list[int]] = [[] for _ in range(count)]
        self.logprobs: list[list[float]] = [[] for _ in range(count)]
        self.reason: list[str | None] = [None] * count  # "eos" | "stop" | "length" once finished
        self.max_tokens = max_tokens
        self.stops = tuple(s for s in stops if s)
        # Every token is at least one byte, so a stop string of b bytes spans at most b
        # tokens; two more absorb decoders that alter the first token of a window.
        self.window = max((len(s.encode()) for s in self.stops), default=0) + 2

    def stop_string_hits(self, rows: list[int], tokenizer) -> set[int]:
        """Rows whose newest token completed a stop string (one batched decode of their tails)."""
        if not self.stops or not rows:
            return set()
        tails = tokenizer.batch_decode([self.tokens[r][-self.window:] for r in rows], skip_special_tokens=False)
        return {r for r, text in zip(rows, tails) if any(s in text for s in self.stops)}

    def completion(self, r: int, tokenizer, params: SamplingParams) -> Completion:
        """The finished rollout: EOS stays in the ids but not the text; a stop string is cut from the text."""
        tokens, reason = self.tokens[r], self.reason[r] or "length"
        text_ids = tokens[:-1] if reason == "eos" else tokens
        text = tokenizer.decode(text_ids, skip_special_tokens=False)
        if reason == "stop":
            cut = [i for i in (text.find(s) for s in self.stops) if i >= 0]
            text = text[:min(cut)] if cut else text
        return Completion(text=text, token_ids=list(tokens),
                          logprobs=list(self.logprobs[r]) if params.logprobs else None,
                          finish_reason="length" if reason == "length" else "stop")


def _single_token_groups(pairs: list[tuple[list[int], list[int]]]) -> dict[int, list[tuple[int, int]]]:
    """``{representative: [(index, token), ...]}``: one forward per distinct prompt whose continuations
    are single tokens (multiple-choice options, judge score digits); every other pair stands alone."""
    groups: dict[int, list[tuple[int, int]]] = {}
    first_of: dict[tuple[int, ...], int] = {}
    for i, (p, c) in enumerate(pairs):
        if len(c) == 1:
            rep = first_of.setdefault(tuple(p), i)
            groups.setdefault(rep, []).append((i, c[0]))
        else:
            groups[i] = [(i, 0)]
    return groups


def _pick(logits, temperature: float, top_p: float, u):
    """Next tokens (greedy at temperature 0, else temperature + nucleus) and their RAW log-probs.

    Sampling is by inverse CDF on one uniform per row, so a row's choice depends only
    on its own logits and random stream, never on the rest of the batch. At
    temperature 1 the one ``exp`` pass serves both the sampling weights and the
    normalizer of the raw log-probs.
    """
    import torch

    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, _token_logprobs(logits, tokens)
    top = logits.max(-1, keepdim=True).values
    weights = torch.exp((logits - top) / temperature)  # unnormalized; largest is exactly 1
    tokens = _inverse_cdf(weights, top_p, u)
    chosen = logits.gather(-1, tokens[:, None])[:, 0]
    if temperature == 1:
        return tokens, chosen - top[:, 0] - weights.sum(-1).log()
    return tokens, chosen - logits.logsumexp(-1)


def _inverse_cdf(weights, top_p: float, u):
    """Sample each row of (unnormalized) ``weights`` restricted to its top-p nucleus, with uniforms ``u``."""
    import torch

    order = None
    if top_p < 1.0:
        weights, order = weights.sort(dim=-1, descending=True)
        before = (weights.cumsum(-1) - weights) / weights.sum(-1, keepdim=True)  # mass of likelier tokens
        weights = weights.masked_fill(before >= top_p, 0.0)  # smallest set reaching top_p
    cdf = weights.double().cumsum(-1)
    target = (1.0 - u.double()) * cdf[:, -1]  # in (0, total]: never picks a zero-weight token
    index = torch.searchsorted(cdf, target[:, None]).clamp(max=weights.shape[-1] - 1)[:, 0]
    return index if order is None else order.gather(-1, index[:, None])[:, 0]


def _token_logprobs(logits, tokens):
    """``log_softmax(logits)[token]`` in fp32, without materializing the full log-softmax."""
    logits = logits.float()
    return logits.gather(-1, tokens[:, None])[:, 0] - logits.logsumexp(-1)


def _uniforms(seeds: list[int], params: SamplingParams, device):
    """``[rows, max_tokens]`` uniforms, row ``r`` from its own ``torch.Generator`` (None when greedy)."""
    import torch

    if params.temperature == 0:
        return None
    rows = [torch.rand(params.max_tokens, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(rows).to(device)


def _row_seed(base: int, ids: list[int], key: int) -> int:
    """Seed of one rollout's random stream: a hash of (call seed, prompt ids, sample number)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{base}:{key}:".encode())
    h.update(array("q", ids).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def _select_cache(cache, index):
    """A new cache holding rows ``index`` (``None``: all) of ``cache``, which stays intact for later batches.

    Plain full-attention layers become ``BlockLayer``s, which append in place; any
    other layer type (sliding window, linear attention) is row-selected as it is.
    """
    block = _block_layer()
    new = copy.copy(cache)
    new.layers = [block.select(layer, index) if block.handles(layer) else _selected(layer, index)
                  for layer in cache.layers]
    return new


def _selected(layer, index):
    """A shallow copy of ``layer`` keeping rows ``index`` (the original's tensors are not modified)."""
    layer = copy.copy(layer)
    if index is not None:
        layer.batch_select_indices(index)
    return layer


@functools.cache
def _block_layer():
    """The ``BlockLayer`` class, built on first use: it subclasses transformers' ``DynamicLayer``."""
    from transformers.cache_utils import DynamicLayer

    class BlockLayer(DynamicLayer):
        """A ``DynamicLayer`` that keeps spare room and appends in place.

        ``DynamicLayer.update`` concatenates, copying the whole cache at every decode
        step; this layer grows its buffers by ``BLOCK`` positions at a time and writes
        each new key/value into them, exposing ``keys``/``values`` as views of the
        filled part. Only ``update`` and ``batch_select_indices`` are supported (all
        our decoding loop uses).
        """

        BLOCK = 128

        def __init__(self, keys, values):
            super().__init__()
            self.device, self.is_initialized, self.length = keys.device, True, keys.shape[-2]
            self._k, self._v = keys, values
            self.keys, self.values = keys, values

        @staticmethod
        def handles(layer) -> bool:
            return type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4

        @classmethod
        def select(cls, layer, index):
            """Rows ``index`` of a ``DynamicLayer``; ``None`` aliases its tensors (the first append
            moves them into a new buffer, so the source layer is never written to)."""
            if index is None:
                return cls(layer.keys, layer.values)
            return cls(layer.keys.index_select(0, index), layer.values.index_select(0, index))

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.length + key_states.shape[-2]
            if end > self._k.shape[-2]:
                self._k, self._v = self._grown(self._k, end), self._grown(self._v, end)
            self._k[:, :, self.length:end] = key_states
            self._v[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
            return self.keys, self.values

        def _grown(self, buffer, needed: int):
            shape = (*buffer.shape[:2], needed + self.BLOCK, buffer.shape[-1])
            grown = buffer.new_empty(shape)
            grown[:, :, :self.length] = buffer[:, :, :self.length]
            return grown

        def batch_select_indices(self, indices) -> None:
            self._k, self._v = self._k.index_select(0, indices), self._v.index_select(0, indices)
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        def batch_repeat_interleave(self, repeats: int) -> None:
            raise NotImplementedError("BlockLayer supports row selection only")

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("BlockLayer supports row selection only")

    return BlockLayer


# Architectures whose attention is plain scaled dot-product over RoPE'd keys (no
# softcapping, sinks or sliding windows): shared-prefix attention is exact for them.
SHARED_ATTENTION_MODELS = frozenset({"phi3", "llama", "mistral", "qwen2", "qwen3"})
SHARED_ATTENTION = "phiforge_shared_prefix"
_ACTIVE_SHARED_CACHE: contextvars.ContextVar = contextvars.ContextVar("phiforge_shared_cache", default=None)


def _standard_attention(config) -> bool:
    return (getattr(config, "model_type", None) in SHARED_ATTENTION_MODELS
            and not getattr(config, "sliding_window", None)
            and not getattr(config, "attn_logit_softcapping", None))


def _register_shared_attention() -> str:
    """Register ``_shared_prefix_attention`` with transformers (idempotent) and return its name.

    The name has no mask function registered, so transformers skips building the
    4-D attention mask during shared decode steps: the prefix padding is masked here.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(SHARED_ATTENTION, _shared_prefix_attention)
    return SHARED_ATTENTION


def _shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function for decode steps over a shared-prefix cache (see ``SharedPrefixLayer.attend``)."""
    cache = _ACTIVE_SHARED_CACHE.get()
    if cache is None or query.shape[2] != 1 or dropout:
        raise RuntimeError("phiforge shared-prefix attention runs only inside LocalBackend decode steps")
    for name in ("softcap", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise RuntimeError(f"shared-prefix attention does not support {name!r}; "
                               "construct LocalBackend(..., shared_attention=False) for this model")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return cache.layers[module.layer_idx].attend(query, key, value, scale), None


def _shared_prefix_cache(pre: _Prefill, index):
    """A cache whose rows share ``pre``'s prefix KV in place and store only their own new tokens."""
    return _cache_classes()[1](pre.cache, pre.mask, index)


@functools.cache
def _cache_classes():
    """``(SharedPrefixLayer, SharedPrefixCache)``, built on first use on top of transformers' cache classes."""
    import torch
    from transformers.cache_utils import Cache

    block = _block_layer()

    class SharedPrefixLayer(block):
        """One layer: the shared prefix K/V (``[prefixes, kv_heads, width, dim]``, left-padded) plus
        each row's generated K/V in a ``BlockLayer``; ``update`` returns only the latter."""

        def __init__(self, prefix_keys, prefix_values, rows: int, owner_cache):
            heads, dim = prefix_keys.shape[1], prefix_keys.shape[3]
            super().__init__(prefix_keys.new_empty(rows, heads, 0, dim),
                             prefix_values.new_empty(rows, heads, 0, dim))
            self.prefix_keys, self.prefix_values, self.owner_cache = prefix_keys, prefix_values, owner_cache

        def get_seq_length(self) -> int:
            return self.prefix_keys.shape[-2] + self.length

        def attend(self, query, keys, values, scale: float):
            """Softmax attention of each row over [its prefix; its own generated tokens].

            Scores against the prefix are computed with the rows grouped by prefix
            (zero-padded to the largest group), so each prefix's keys and values are
            read once per step for all its rows instead of once per row; scores
            against each row's own tokens are per row. One fp32 softmax over both
            (as HF's eager attention does), then the two weighted sums are added.
            """
            shared = self.owner_cache
            rows, q_heads, _, dim = query.shape
            prefixes, kv_heads, width, _ = self.prefix_keys.shape
            rep = q_heads // kv_heads
            q = query[:, :, 0].reshape(rows, kv_heads, rep, dim)
            on_prefix = torch.matmul(shared.to_groups(q), self.prefix_keys.transpose(-1, -2))
            on_own = torch.matmul(q, keys.transpose(-1, -2))
            scores = torch.cat([shared.to_rows(on_prefix).float() + shared.row_bias, on_own.float()], dim=-1)
            weights = torch.softmax(scores * scale, dim=-1)
            from_prefix = torch.matmul(shared.to_groups(weights[..., :width].to(values.dtype)), self.prefix_values)
            out = shared.to_rows(from_prefix) + torch.matmul(weights[..., width:].to(values.dtype), values)
            return out.reshape(rows, 1, q_heads, dim)

    class SharedPrefixCache(Cache):
        """Rows ``index`` continuing the prefixes of a prefill cache, sharing its K/V in place."""

        def __init__(self, prefill_cache, prefix_mask, index):
            rows = len(index)
            super().__init__(layers=[SharedPrefixLayer(layer.keys, layer.values, rows, self)
                                     for layer in prefill_cache.layers])
            bias = torch.zeros(prefix_mask.shape, dtype=torch.float32, device=prefix_mask.device)
            self.bias = bias.masked_fill(prefix_mask == 0, float("-inf"))  # [prefixes, width]
            self._set_owners(index)

        def _set_owners(self, owner) -> None:
            """Row ``r`` goes to slot ``owner[r] * groups + (its rank among rows of that prefix)``."""
            counts = torch.bincount(owner, minlength=self.bias.shape[0])
            order = torch.argsort(owner, stable=True)
            starts = counts.cumsum(0) - counts
            rank = torch.empty_like(owner)
            rank[order] = torch.arange(len(owner), device=owner.device) - starts[owner[order]]
            self.owner, self.groups = owner, int(counts.max())
            self.slot = owner * self.groups + rank
            # Rows already sit in slot order with no gaps (e.g. one prefix): no padding needed.
            self.dense = len(owner) == len(counts) * self.groups and bool((owner[1:] >= owner[:-1]).all())
            self.row_bias = self.bias.index_select(0, owner)[:, None, None, :]  # [rows, 1, 1, width]

        def to_groups(self, t):
            """``[rows, kv_heads, rep, x]`` -> ``[prefixes, kv_heads, groups * rep, x]`` (zero rows pad groups)."""
            rows, kv_heads, rep, x = t.shape
            if not self.dense:
                t = t.new_zeros(self.bias.shape[0] * self.groups, kv_heads, rep, x).index_copy_(0, self.slot, t)
            t = t.reshape(-1, self.groups, kv_heads, rep, x).transpose(1, 2)
            return t.reshape(-1, kv_heads, self.groups * rep, x)

        def to_rows(self, t):
            """Inverse of ``to_groups``: back to ``[rows, kv_heads, rep, x]``."""
            prefixes, kv_heads, _, x = t.shape
            t = t.reshape(prefixes, kv_heads, self.groups, -1, x).transpose(1, 2)
            t = t.reshape(prefixes * self.groups, kv_heads, -1, x)
            return t if self.dense else t.index_select(0, self.slot)

        def batch_select_indices(self, indices) -> None:
            super().batch_select_indices(indices)
            self._set_owners(self.owner.index_select(0, indices))

    return SharedPrefixLayer, SharedPrefixCache


def _output_cache(out):
    """The cache a forward returned (``cache`` from transformers 5.24, ``past_key_values`` before)."""
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.past_key_values


def _stop_token_ids(model, tokenizer) -> set[int]:
    """EOS ids of the tokenizer and generation config, plus ``<|im_end|>`` when the vocabulary has it."""
    ids: set[int] = set()
    candidates = [tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    for value in candidates:
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    im_end = tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
    if im_end is not None and tokenizer.convert_ids_to_tokens(im_end) == IM_END_TOKEN:
        ids.add(im_end)
    return {int(i) for i in ids}


def _pad_id(tokenizer, stop_ids: set[int]) -> int:
    """Any valid id works (padded positions are masked out); prefer the tokenizer's pad token."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(stop_ids) if stop_ids else 0


def _is_messages(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and isinstance(prompt[0], dict)


def _as_ids(index: int, prompt: Any, allow_empty: bool = False) -> list[int]:
    """A token-id prompt as a plain list of ints (lists, tuples, arrays and 1-D tensors accepted)."""
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if isinstance(prompt, (str, bytes, dict)) or not isinstance(prompt, Sequence):
        raise ConfigError(f"prompt {index}: expected text, a list of chat messages or a list of token ids, "
                          f"got {type(prompt).__name__}")
    try:
        ids = [operator.index(t) for t in prompt]
    except TypeError as e:
        raise ConfigError(f"prompt {index}: token ids must be integers ({e})") from e
    if not ids and not allow_empty:
        raise ConfigError(f"prompt {index}: is empty (no tokens); give at least one token to condition on")
    return ids


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype, device: str):
    """``None``: fp32 on CPU, bf16 (fp16 without bf16 support) on GPU; names map to torch dtypes."""
    import torch

    if dtype is None:
        if str(device).startswith("cpu"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype == "fast":  # generation-only models (teachers): bf16 where the CPU multiplies bf16 natively
        if str(device).startswith("cpu"):
            return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        return _resolve_dtype(None, device)
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ConfigError(f"dtype: {dtype!r} is not one of {sorted(names) + ['auto', 'fast']}")
    return names[dtype]


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 (Linux ``/proc/cpuinfo``): bf16 matmuls run natively, not emulated.

    Decoding is memory-bound, so bf16 weights decode ~1.6x faster on such CPUs
    (measured on the bundled teacher) and several times slower where bf16 is emulated.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
