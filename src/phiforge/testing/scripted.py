"""A scripted in-process ``Backend`` for unit tests of generation logic.

Real-model behaviour is tested against the bundled teacher; this fake answers by a
Python function of the prompt so a test can drive every branch of a technique
(invalid JSON then a re-ask, unanimous vs split answers, a critic that passes on
round 2, ...) exactly and fast. It keeps ``Backend``'s usage accounting and records
every prompt it saw.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

from phiforge.backends.base import Completion, SampleResult, SamplingParams, Usage

Responder = Callable[[str, int], str]  # (prompt as text, sample index) -> reply


def prompt_text(prompt) -> str:
    """Chat messages joined as ``role: content`` lines; text as is; token ids as their repr."""
    if isinstance(prompt, str):
        return prompt
    if prompt and isinstance(prompt[0], dict):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return repr(list(prompt))


class ScriptedBackend:
    """``reply(prompt_text, k)`` gives the k-th completion of a prompt; whitespace-split 'tokens'."""

    def __init__(self, reply: Responder, name: str = "scripted"):
        self.reply, self.name = reply, name
        self.prompts: list[str] = []
        self._usage = Usage()
        self._lock = threading.Lock()

    @property
    def usage(self) -> Usage:
        return self._usage

    def sample(self, prompts: Sequence, params: SamplingParams, progress=None) -> SampleResult:
        out, usage = [], Usage(calls=len(prompts))
        for prompt in prompts:
            text = prompt_text(prompt)
            with self._lock:
                self.prompts.append(text)
            usage.prompt_tokens += len(text.split())
            completions = []
            for k in range(params.n):
                reply = self.reply(text, k)
                ids = list(range(len(reply.split())))
                usage.completion_tokens += len(ids)
                completions.append(Completion(text=reply, token_ids=ids, logprobs=[0.0] * len(ids),
                                              finish_reason="stop"))
            out.append(completions)
        self._usage.add(usage)
        return SampleResult(out, usage)

    def score(self, prompt_ids, continuation_ids):
        raise NotImplementedError("ScriptedBackend does not score; use a LocalBackend on a tiny model")

    def chat_prompt(self, messages, add_generation_prompt: bool = True) -> list[int]:
        return list(range(len(prompt_text(messages).split())))
