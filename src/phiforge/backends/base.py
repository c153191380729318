"""The one interface every stage uses to talk to a model.

What the recipe needs from a model, and nothing more:

* ``sample``: ``n`` completions for each prompt, where a prompt is text, chat
  messages, or token ids (Pivotal Token Search works on exact token ids); each
  completion carries its text, token ids and per-token log-probs.
* ``score``: exact log-probs of given continuation token ids after given prompt ids
  (DPO reference log-probs, PTS bookkeeping, base-model multiple-choice evals).
* ``chat``: the model's chat template applied to messages (Phi-4 format for ours).

Every call returns ``Usage`` accounting (prompt / completion tokens, calls, seconds)
so stages can put token and call counts in their ``stats.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, Union, runtime_checkable

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
Prompt = Union[str, Sequence[Message], Sequence[int]]


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Decoding settings; ``temperature == 0`` means greedy."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = True

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Completion:
    """One sampled continuation: exactly the generated tokens (stop string excluded from text)."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None  # log p(token_i | prompt, tokens_<i), one per token id
    finish_reason: str  # "stop" (EOS or stop string) | "length"


@dataclass
class Usage:
    """Per-call accounting, additive across calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cached_calls: int = 0
    seconds: float = 0.0

    def add(self, other: "Usage") -> "Usage":
        for f in ("prompt_tokens", "completion_tokens", "calls", "cached_calls", "seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        return self

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SampleResult:
    """``completions[i]`` holds the ``n`` completions of prompt ``i``."""

    completions: list[list[Completion]]
    usage: Usage = field(default_factory=Usage)


@runtime_checkable
class Backend(Protocol):
    """A model we can sample from and score with."""

    name: str

    def sample(self, prompts: Sequence[Prompt], params: SamplingParams) -> SampleResult:
        """``params.n`` completions for every prompt (batched by the backend)."""
        ...

    def score(self, prompt_ids: Sequence[Sequence[int]], continuation_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-prob of each continuation token given the prompt and earlier continuation tokens."""
        ...

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template."""
        ...

    @property
    def usage(self) -> Usage:
        """Totals over the backend's lifetime."""
        ...
