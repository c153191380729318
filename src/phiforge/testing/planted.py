"""A planted-pivot policy: a scripted token-id ``Backend`` whose p(success | prefix) is known exactly.

Why: to measure Pivotal Token Search (Phi-4 report §4.3) we need ground truth: which
tokens of a solution really move p(success), and by how much. Here a response is
``body_len`` body tokens, then an answer token (``CORRECT`` or ``WRONG``), then ``EOS``.
At most body positions the policy draws a *filler* token that changes nothing. At the
planted positions (``Plant``) each token choice adds an ``effect`` to the probability
that the answer comes out ``CORRECT``:

    P(CORRECT | body) = base + sum of the effects of the tokens at the plants.

Because the effects add, p(success | prefix) is that sum with the plants not yet
reached replaced by their expected effect (``PlantedTask.p_success``), and the true
Δp of every token follows (``PlantedTask.deltas``). The answer token itself moves p
to 1 or 0, so it is pivotal whenever p(success | body) is not near 0 or 1 — as the
final answer often is in real PTS.

Prompts are ``[QUERY0 + task index, ASSISTANT] + response prefix``. Sampling is
exactly reproducible per row as in ``LocalBackend``: rollout ``k`` of a prompt uses a
random stream seeded by ``(params.seed, prompt ids, k)``, repeats of a prompt in one
call are numbered on, and log-probs are the exact ones.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Sequence

from phiforge.backends.base import Completion, SampleResult, SamplingParams, Usage
from phiforge.verify.oracle import Verdict

EOS, ASSISTANT, CORRECT, WRONG = 1, 2, 3, 4
FILLER0, FILLERS = 10, 40  # filler token ids FILLER0 .. FILLER0 + FILLERS - 1
QUERY0 = 1000  # prompt token of task i is QUERY0 + i
NAMES = {EOS: "<eos>", ASSISTANT: "<assistant>", CORRECT: "yes", WRONG: "no"}


@dataclass(frozen=True)
class Plant:
    """At body ``position`` the policy draws ``tokens[i]`` with ``probs[i]``; it adds ``effects[i]``."""

    position: int
    tokens: tuple[int, ...]
    probs: tuple[float, ...]
    effects: tuple[float, ...]

    @property
    def mean_effect(self) -> float:
        return sum(p * e for p, e in zip(self.probs, self.effects))

    def effect(self, token: int) -> float:
        return self.effects[self.tokens.index(token)] if token in self.tokens else 0.0


@dataclass(frozen=True)
class PlantedTask:
    """One query: body length, base success probability, plants, and a seed for the filler distributions."""

    body_len: int
    base: float
    plants: tuple[Plant, ...] = ()
    seed: int = 0
    fillers: int = 4
    """Filler tokens per body position."""
    fork_rate: float = 0.15
    """Share of filler positions that are neutral forks (several likely tokens, no effect)."""
    peak: float = 0.9
    """At the other filler positions one token has probability in [peak, 0.995] (LLM-like low entropy)."""
    _table: list = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        lo = self.base + sum(min(p.effects) for p in self.plants)
        hi = self.base + sum(max(p.effects) for p in self.plants)
        if lo < -1e-9 or hi > 1 + 1e-9:
            raise ValueError(f"P(CORRECT) ranges over [{lo:.3f}, {hi:.3f}]; keep base + effects within [0, 1]")
        object.__setattr__(self, "_table", self._build_table())

    def _build_table(self) -> list[tuple[list[int], list[float], list[float]]]:
        """Per body position: (tokens, cumulative probabilities, log-probs)."""
        rng, plants, table = random.Random(self.seed), {p.position: p for p in self.plants}, []
        for pos in range(self.body_len):
            if pos in plants:
                tokens, probs = list(plants[pos].tokens), list(plants[pos].probs)
            else:
                tokens, probs = self._filler(rng)
            table.append((tokens, list(itertools.accumulate(probs)), [math.log(p) for p in probs]))
        return table

    def _filler(self, rng: random.Random) -> tuple[list[int], list[float]]:
        """A neutral fork (flat-ish), or a dominant token with a few unlikely alternatives."""
        tokens = rng.sample(range(FILLER0, FILLER0 + FILLERS), self.fillers)
        weights = [rng.uniform(0.2, 1.0) for _ in tokens]
        if rng.random() >= self.fork_rate:
            rest = 1 - rng.uniform(self.peak, 0.995)
            weights = [1 - rest] + [rest * w / sum(weights[1:]) for w in weights[1:]]
        return tokens, [w / sum(weights) for w in weights]

    # -- ground truth -----------------------------------------------------------
    def p_correct(self, body: Sequence[int]) -> float:
        """P(CORRECT) after a complete body."""
        return self.base + sum(p.effect(body[p.position]) for p in self.plants)

    def p_success(self, prefix: Sequence[int]) -> float:
        """Exact p(success | response prefix)."""
        if len(prefix) > self.body_len:
            return 1.0 if prefix[self.body_len] == CORRECT else 0.0
        return self.base + sum(p.effect(prefix[p.position]) if p.position < len(prefix) else p.mean_effect
                               for p in self.plants)

    def deltas(self, solution: Sequence[int]) -> list[float]:
        """True Δp of each token: p(success | solution[:i+1]) - p(success | solution[:i])."""
        return [self.p_success(solution[:i + 1]) - self.p_success(solution[:i]) for i in range(len(solution))]

    def true_pivots(self, solution: Sequence[int], p_gap: float) -> set[int]:
        return {i for i, d in enumerate(self.deltas(solution)) if abs(d) >= p_gap - 1e-9}

    # -- policy -----------------------------------------------------------------
    def step(self, response: Sequence[int], u: float) -> tuple[int, float]:
        """Next token after ``response`` for uniform ``u``, and its log-prob."""
        pos = len(response)
        if pos < self.body_len:
            tokens, cum, logprobs = self._table[pos]
            i = min(bisect.bisect_right(cum, u * cum[-1]), len(tokens) - 1)
            return tokens[i], logprobs[i]
        if pos == self.body_len:
            s = min(max(self.p_correct(response), 0.0), 1.0)
            return (CORRECT, _log(s)) if u < s else (WRONG, _log(1 - s))
        return EOS, 0.0

    def logprob(self, response: Sequence[int], token: int) -> float:
        pos = len(response)
        if pos < self.body_len:
            tokens, _, logprobs = self._table[pos]
            return logprobs[tokens.index(token)] if token in tokens else -math.inf
        if pos == self.body_len:
            s = min(max(self.p_correct(response), 0.0), 1.0)
            return _log(s) if token == CORRECT else _log(1 - s) if token == WRONG else -math.inf
        return 0.0 if token == EOS else -math.inf


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


class PlantedTokenizer:
    """Decodes planted ids to words: the answer reads 'yes'/'no', fillers 'w<id>'."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        special = (EOS, ASSISTANT) if skip_special_tokens else ()
        return " ".join(NAMES.get(t, f"w{t}") for t in ids if t not in special)


class PlantedPolicy:
    """A ``Backend`` over ``PlantedTask``s, sampling on token-id prompts (temperature 1, top_p 1 only)."""

    def __init__(self, tasks: Sequence[PlantedTask], name: str = "planted"):
        self.tasks, self.name = list(tasks), name
        self.tokenizer = PlantedTokenizer()
        self.stop_ids = {EOS}
        self.prompts: list[list[int]] = []
        self._usage = Usage()

    @property
    def usage(self) -> Usage:
        return self._usage

    def prompt_ids(self, index: int) -> list[int]:
        return [QUERY0 + index, ASSISTANT]

    def _split(self, prompt: Sequence[int]) -> tuple[PlantedTask, list[int]]:
        ids = list(prompt)
        if len(ids) < 2 or ids[1] != ASSISTANT or not 0 <= ids[0] - QUERY0 < len(self.tasks):
            raise ValueError(f"not a planted prompt: {ids[:4]}...; use PlantedPolicy.prompt_ids(i) + response ids")
        return self.tasks[ids[0] - QUERY0], ids[2:]

    def sample(self, prompts: Sequence[Sequence[int]], params: SamplingParams, progress=None) -> SampleResult:
        if params.temperature != 1.0 or params.top_p != 1.0:
            raise ValueError("PlantedPolicy samples at temperature 1 and top_p 1 only (its p(success) is exact there)")
        seed = params.seed if params.seed is not None else random.getrandbits(62)
        keys: dict[tuple[int, ...], int] = {}
        out, usage = [], Usage(calls=len(prompts), prompt_tokens=sum(map(len, prompts)))
        for prompt in prompts:
            ids = tuple(prompt)
            task, response = self._split(ids)
            self.prompts.append(list(ids))
            first = keys.get(ids, 0)
            keys[ids] = first + params.n
            group = [self._rollout(task, response, random.Random(hash((seed, ids, first + k))), params.max_tokens)
                     for k in range(params.n)]
            usage.completion_tokens += sum(len(c.token_ids) for c in group)
            out.append(group)
        self._usage.add(usage)
        return SampleResult(out, usage)

    def _rollout(self, task: PlantedTask, response: list[int], rng: random.Random, max_tokens: int) -> Completion:
        context, tokens, logprobs = list(response), [], []
        while len(tokens) < max_tokens:
            token, lp = task.step(context, rng.random())
            context.append(token)
            tokens.append(token)
            logprobs.append(lp)
            if token == EOS:
                return Completion(self.tokenizer.decode(tokens, True), tokens, logprobs, "stop")
        return Completion(self.tokenizer.decode(tokens, True), tokens, logprobs, "length")

    def score(self, prompt_ids, continuation_ids) -> list[list[float]]:
        out = []
        for prompt, cont in zip(prompt_ids, continuation_ids):
            task, response = self._split(prompt)
            out.append([task.logprob(response + list(cont[:i]), t) for i, t in enumerate(cont)])
        return out

    def chat_prompt(self, messages, add_generation_prompt: bool = True) -> list[int]:
        raise NotImplementedError("PlantedPolicy has no chat template; use prompt_ids(task index)")


class PlantedOracle:
    """Accepts a response whose last word is the reference ('yes' for planted tasks)."""

    def check(self, response: str, reference: str = "yes") -> Verdict:
        words = response.split()
        if not words:
            return Verdict(False, None, "no_answer")
        same = words[-1] == reference
        return Verdict(same, words[-1], "equivalent" if same else "not_equivalent")

    def check_many(self, responses: Sequence[str], references: Sequence[str]) -> list[Verdict]:
        return [self.check(r, ref) for r, ref in zip(responses, references, strict=True)]


def random_tasks(count: int, seed: int = 0, body_len: int = 24, max_plants: int = 3,
                 medium: float = 0.5) -> list[PlantedTask]:
    """Tasks with 1..max_plants plants of three tokens (helps, hurts, neutral) at random positions.

    A share ``medium`` of the tasks has a base success rate in [0.3, 0.7]; the rest are
    easy or hard (base in [0.85, 0.98] or [0.02, 0.15], alike), as pass rates of a real
    policy spread over a query pool. Effects are drawn so that P(CORRECT) stays within
    [0, 1]; some planted tokens move p by more than a typical p_gap, some by less.
    """
    rng = random.Random(seed)
    return [_random_task(rng, body_len, max_plants, medium) for _ in range(count)]


def _random_task(rng: random.Random, body_len: int, max_plants: int, medium: float) -> PlantedTask:
    if rng.random() < medium:
        base = rng.uniform(0.3, 0.7)
    else:
        base = rng.choice([rng.uniform(0.85, 0.98), rng.uniform(0.02, 0.15)])
    positions = sorted(rng.sample(range(body_len), rng.randint(1, max_plants)))
    room = min(base, 1 - base) / len(positions)
    plants = []
    for pos in positions:
        up, down = rng.uniform(0.5, 1.0) * room, rng.uniform(0.5, 1.0) * room
        weights = [rng.uniform(0.2, 1.0) for _ in range(3)]
        probs = tuple(w / sum(weights) for w in weights)
        tokens = tuple(rng.sample(range(FILLER0, FILLER0 + FILLERS), 3))
        plants.append(Plant(pos, tokens, probs, (up, -down, 0.0)))
    return PlantedTask(body_len, base, tuple(plants), seed=rng.randrange(2**31))
