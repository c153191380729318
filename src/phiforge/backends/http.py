"""Backend for OpenAI-compatible servers (vLLM, SGLang, llama.cpp's server, OpenAI).

Requests go out concurrently (asyncio + httpx, bounded by ``concurrency``), are
retried with exponential backoff and jitter on HTTP 429, 5xx, timeouts, broken
connections and truncated JSON (honouring ``Retry-After``), and end in a
``BackendError`` naming the endpoint and the last response when retries run out.
Every successful response is stored in an on-disk cache keyed by the request, so
a rerun of a stage makes no calls and a failed stage keeps the work already done.
API keys come only from the environment (``api_key_env``), never from recipes,
and never enter cache keys.

Servers differ; a ``ServerProfile`` says what one supports, and the backend
degrades where it must:

* no token-id prompts (llama.cpp: HTTP 422) → the ids are decoded to text and
  re-encoded with the model's tokenizer; if the round trip does not reproduce the
  ids exactly the call fails rather than silently scoring other tokens;
* no ``n`` (llama.cpp ignores it) → ``n`` separate requests, seeds ``seed + i``;
* no list-of-prompts batches (llama.cpp: HTTP 500) → one request per prompt;
* no trustworthy prompt log-probs (llama.cpp's ``echo`` values match the model's at no offset) →
  ``score`` goes to a local scorer backend if one is given, else fails clearly.

vLLM supports all of these: that is the fast path (``profile="vllm"``).
``profile="auto"`` asks the server instead of trusting a name
(``phiforge.backends.probe``): six tiny requests, once, at the first call.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from phiforge.backends.base import Completion, Prompt, SampleResult, SamplingParams, Usage
from phiforge.backends.cache import RequestCache, request_key
from phiforge.errors import BackendError, ConfigError


@dataclass(frozen=True)
class ServerProfile:
    """What an OpenAI-compatible server supports."""

    token_prompts: bool = True   # /v1/completions accepts a prompt given as token ids
    n: bool = True               # honours n > 1
    token_ids_in_logprobs: bool = True  # vLLM's return_tokens_as_token_ids
    prompt_logprobs: bool = True  # echo + logprobs gives aligned prompt log-probs


PROFILES = {
    "vllm": ServerProfile(),
    "openai": ServerProfile(token_prompts=True, n=True, token_ids_in_logprobs=False, prompt_logprobs=False),
    "llama.cpp": ServerProfile(token_prompts=False, n=False, token_ids_in_logprobs=False, prompt_logprobs=False),
}

RETRY_STATUS = {408, 409, 425, 429}
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class _Request:
    prompt_index: int
    sample_index: int
    path: str
    payload: dict


class HTTPBackend:
    """Sample from any OpenAI-compatible endpoint with retries, caching and degraded paths."""

    def __init__(self, base_url: str, model: str, *, profile: str | ServerProfile = "vllm",
                 api_key_env: str | None = None, concurrency: int = 8, max_retries: int = 6,
                 backoff_base: float = 0.5, backoff_max: float = 30.0, timeout: float = 120.0,
                 cache_path: str | Path | None = None, tokenizer=None, scorer=None, name: str | None = None,
                 progress: Progress | None = None):
        self.base_url = base_url.rstrip("/")
        self.model, self.name = model, name or f"http:{model}"
        if isinstance(profile, str) and profile != "auto" and profile not in PROFILES:
            raise ConfigError(f"server profile {profile!r} unknown; choose 'auto' or one of {sorted(PROFILES)}")
        self._profile = PROFILES.get(profile) if isinstance(profile, str) else profile
        self.probe_report = None  # set when profile="auto" has probed the server
        self.progress = progress
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self.api_key:
            raise ConfigError(f"environment variable {api_key_env} is not set; export the API key there")
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.cache = RequestCache(cache_path) if cache_path else None
        self.tokenizer, self.scorer = tokenizer, scorer
        self._usage = Usage()
        self._loop = _LoopThread()

    def close(self) -> None:
        """Close pooled connections and the event-loop thread (idempotent; also done at exit)."""
        self._loop.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> "HTTPBackend":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    @property
    def usage(self) -> Usage:
        return self._usage

    @property
    def profile(self) -> ServerProfile:
        """The server's features: as configured, or probed once (``profile="auto"``)."""
        if self._profile is None:
            from phiforge.backends.probe import probe_server

            self.probe_report = probe_server(self.base_url, self.model, headers=self._headers(),
                                             tokenizer=self.tokenizer, timeout=self.timeout)
            self._profile = self.probe_report.profile()
        return self._profile

    # -- sampling -----------------------------------------------------------
    def sample(self, prompts: Sequence[Prompt], params: SamplingParams,
               progress: Progress | None = None) -> SampleResult:
        """``params.n`` completions per prompt; ``progress(done, total)`` counts finished requests."""
        requests = [r for i, p in enumerate(prompts) for r in self._requests(i, p, params)]
        t0 = time.perf_counter()
        responses, usage = self._loop.run(self._run_all(requests, progress or self.progress))
        usage.seconds = time.perf_counter() - t0
        self._usage.add(usage)
        out: list[list[Completion]] = [[] for _ in prompts]
        for req, body in zip(requests, responses):
            out[req.prompt_index].extend(self._parse(req, body, params))
        return SampleResult(out, usage)

    def _requests(self, index: int, prompt: Prompt, params: SamplingParams) -> list[_Request]:
        path, payload = self._payload(prompt, params)
        if self.profile.n or params.n == 1:
            return [_Request(index, 0, path, {**payload, "n": params.n})]
        reqs = []
        for i in range(params.n):  # server ignores n: one request per sample
            seeded = {**payload, "n": 1}
            if params.seed is not None:
                seeded["seed"] = params.seed + i
            reqs.append(_Request(index, i, path, seeded))
        return reqs

    def _payload(self, prompt: Prompt, params: SamplingParams) -> tuple[str, dict]:
        common = {"model": self.model, "temperature": params.temperature, "top_p": params.top_p,
                  "max_tokens": params.max_tokens}
        if params.stop:
            common["stop"] = list(params.stop)
        if params.seed is not None:
            common["seed"] = params.seed
        if _is_messages(prompt):
            return "/v1/chat/completions", {**common, "messages": list(prompt), "logprobs": params.logprobs}
        body = {**common, "prompt": self._prompt_field(prompt)}
        if params.logprobs:
            body["logprobs"] = 1
        if self.profile.token_ids_in_logprobs:
            body["return_tokens_as_token_ids"] = True
        return "/v1/completions", body

    def _prompt_field(self, prompt: Prompt):
        if isinstance(prompt, str):
            return prompt
        ids = [int(t) for t in prompt]
        if self.profile.token_prompts:
            return ids
        return self._ids_as_text(ids)

    def _ids_as_text(self, ids: list[int]) -> str:
        """Degraded path: a text prompt that provably tokenizes back to ``ids``."""
        if self.tokenizer is None:
            raise BackendError(f"{self.base_url}: this server takes no token-id prompts; give the backend the "
                               "model's tokenizer so ids can be sent as text with a round-trip check")
        text = self.tokenizer.decode(ids)
        again = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if list(again) != ids:
            raise BackendError(f"{self.base_url}: token-id prompt does not survive a decode/encode round trip "
                               f"({len(ids)} ids -> {len(again)}); this server cannot take exact token prompts: "
                               "use vLLM (token prompts) or the local backend")
        return text

    # -- transport ------------------------------------------------------------
    async def _run_all(self, requests: list[_Request], progress: Progress | None = None) -> tuple[list[dict], Usage]:
        import httpx

        usage = Usage()
        sem = asyncio.Semaphore(self.concurrency)
        done = [0]

        async def tracked(client, req):
            try:
                return await self._one(client, sem, req, usage)
            finally:
                done[0] += 1
                if progress is not None:
                    progress(done[0], len(requests))

        client = self._loop.client(lambda: httpx.AsyncClient(timeout=self.timeout, headers=self._headers(),
                                                             limits=httpx.Limits(max_connections=self.concurrency)))
        results = await asyncio.gather(*(tracked(client, r) for r in requests), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            done = len(results) - len(errors)
            raise BackendError(f"{errors[0]} ({done}/{len(results)} requests succeeded and are cached)") \
                from errors[0]
        return list(results), usage

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def _one(self, client, sem: asyncio.Semaphore, req: _Request, usage: Usage) -> dict:
        key = request_key(req.path, req.payload, salt=f"sample{req.sample_index}")
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            usage.cached_calls += 1
            return cached
        async with sem:
            body = await self._post_with_retries(client, req.path, req.payload)
        usage.calls += 1
        u = body.get("usage") or {}
        usage.prompt_tokens += int(u.get("prompt_tokens") or 0)
        usage.completion_tokens += int(u.get("completion_tokens") or 0)
        if self.cache is not None:
            self.cache.put(key, body)
        return body

    async def _post_with_retries(self, client, path: str, payload: dict) -> dict:
        import httpx

        url = self.base_url + path
        last = "no response"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                resp = await client.post(url, json=payload)
                if resp.status_code < 400:
                    try:
                        return resp.json()
                    except ValueError:
                        last = f"HTTP {resp.status_code} with invalid JSON: {resp.text[:200]!r}"
                elif resp.status_code in RETRY_STATUS or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}: {resp.text[:300]!r}"
                    retry_after = _retry_after(resp.headers.get("retry-after"))
                else:
                    raise BackendError(f"{url}: HTTP {resp.status_code} (not retried): {resp.text[:500]!r}")
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e or 'no detail'}"
            if attempt < self.max_retries:
                await asyncio.sleep(self._backoff(attempt, retry_after))
        raise BackendError(f"{url}: request failed after {self.max_retries + 1} attempts; last response: {last}")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter in [d/2, d]; a server's Retry-After wins if larger."""
        delay = min(self.backoff_max, self.backoff_base * 2 ** attempt)
        delay = random.uniform(delay / 2, delay)
        return min(self.backoff_max, max(delay, retry_after or 0.0))

    # -- parsing ----------------------------------------------------------------
    def _parse(self, req: _Request, body: dict, params: SamplingParams) -> list[Completion]:
        try:
            choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
            parse = _parse_chat if req.path.endswith("chat/completions") else _parse_completion
            return [self._with_ids(parse(c)) for c in choices]
        except (KeyError, TypeError, ValueError) as e:
            raise BackendError(f"{self.base_url}{req.path}: unexpected response shape ({e}): {str(body)[:300]}") from e

    def _with_ids(self, parsed: tuple[str, list[int] | None, list[float] | None, str]) -> Completion:
        text, ids, logprobs, finish = parsed
        if ids is None:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if self.tokenizer else []
        return Completion(text=text, token_ids=ids, logprobs=logprobs, finish_reason=_finish(finish))

    # -- scoring and chat -----------------------------------------------------
    def score(self, prompt_ids, continuation_ids) -> list[list[float]]:
        if self.scorer is not None:
            return self.scorer.score(prompt_ids, continuation_ids)
        if not self.profile.prompt_logprobs:
            raise BackendError(f"{self.base_url}: this server's prompt log-probs are not trustworthy "
                               "(e.g. llama.cpp's echoed log-probs are wrong); pass scorer=LocalBackend(...)")
        pairs = [(list(p), list(c)) for p, c in zip(prompt_ids, continuation_ids)]
        requests = [_Request(i, 0, "/v1/completions", {
            "model": self.model, "prompt": self._prompt_field(p + c), "max_tokens": 1, "echo": True,
            "logprobs": 1, "temperature": 0.0}) for i, (p, c) in enumerate(pairs)]
        bodies, usage = self._loop.run(self._run_all(requests))
        self._usage.add(usage)
        return [_echoed(body, len(p), len(c)) for body, (p, c) in zip(bodies, pairs)]

    def chat_prompt(self, messages, add_generation_prompt: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise BackendError(f"{self.name}: chat_prompt needs the model's tokenizer")
        return list(self.tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=False,
                                                       add_generation_prompt=add_generation_prompt))


class _LoopThread:
    """Where the async requests run: a persistent loop per calling thread, one pooled client per loop.

    Why not ``asyncio.run`` per call: a fresh loop and client per ``sample`` costs a
    new TCP connection and loop set-up every time. So each calling thread keeps its
    own event loop (``run_until_complete``: no thread hop, which measured ~0.5 ms a
    call) and each loop one keep-alive ``httpx.AsyncClient``. Called from inside a
    running loop (Jupyter, async servers, Ray async actors), where a second loop
    cannot run, the call goes to one loop in a daemon thread and the caller blocks
    on the result. After ``fork`` (multiprocessing) everything is made anew.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid, self._local, self._clients = os.getpid(), threading.local(), {}
        self._loops: list = []
        self._thread_loop, self._thread = None, None

    def run(self, coro):
        if self._pid != os.getpid():
            self._reset()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._run_here(coro)
        return self._run_in_thread(coro)

    def _run_here(self, coro):
        loop = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
            with self._lock:
                self._loops.append(loop)
                if len(self._loops) == 1:
                    atexit.register(self.close)
        task = loop.create_task(coro)
        try:
            return loop.run_until_complete(task)
        except BaseException:  # Ctrl-C: cancel the requests in flight, keep the loop usable
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            raise

    def _run_in_thread(self, coro):
        with self._lock:
            if self._thread_loop is None:
                self._thread_loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._thread_loop.run_forever, name="phiforge-http",
                                                daemon=True)
                self._thread.start()
                atexit.register(self.close)
        future = asyncio.run_coroutine_threadsafe(coro, self._thread_loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def client(self, make):
        """The pooled client of the running loop (made on first use)."""
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            self._clients[loop] = make()
        return self._clients[loop]

    def close(self) -> None:
        """Close every pooled client and loop this process made (best effort; idempotent)."""
        if self._pid != os.getpid():
            return
        atexit.unregister(self.close)
        clients, self._clients = self._clients, {}
        for loop, client in clients.items():
            try:
                if loop is self._thread_loop:
                    asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5)
                elif not loop.is_closed() and not loop.is_running():
                    loop.run_until_complete(client.aclose())
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        if self._thread_loop is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(timeout=5)
            self._thread_loop.close()
        for loop in self._loops:
            if not loop.is_running():
                loop.close()
        self._reset()


def _echoed(body: dict, start: int, count: int) -> list[float]:
    """The echoed log-probs of tokens ``start .. start + count`` of the prompt."""
    lps = body["choices"][0]["logprobs"]["token_logprobs"]
    return [float(x) for x in lps[start:start + count]]


def _is_messages(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and isinstance(prompt[0], dict)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _parse_completion(choice: dict) -> tuple[str, list[int] | None, list[float] | None, str]:
    lp = choice.get("logprobs") or {}
    tokens, values = lp.get("tokens"), lp.get("token_logprobs")
    ids = None
    if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        ids = [int(t.split(":", 1)[1]) for t in tokens]
    return choice["text"], ids, [float(v) for v in values] if values else None, choice.get("finish_reason")


def _parse_chat(choice: dict) -> tuple[str, list[int] | None, list[float] | None, str]:
    content = (choice.get("logprobs") or {}).get("content") or []
    values = [float(c["logprob"]) for c in content] or None
    tokens = [c.get("token") for c in content]
    ids = None
    if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        ids = [int(t.split(":", 1)[1]) for t in tokens]
    return choice["message"]["content"] or "", ids, values, choice.get("finish_reason")
