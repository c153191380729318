"""On-disk request cache for model calls (SQLite), so a rerun of a stage costs no calls.

The key is a hash of (endpoint path, model, request payload, sample index): the
same request asked again returns the stored response. Sampling requests are cached
too: rerunning a stage reproduces its earlier samples instead of drawing new ones,
which is what makes reruns free and deterministic. Writes are committed per
request, so a crash loses at most the call in flight.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path


def request_key(path: str, payload: dict, salt: str = "") -> str:
    blob = json.dumps({"path": path, "payload": payload, "salt": salt}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    """A tiny thread-safe key → JSON store in one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: each write is safe against a crash of this process (what a
        # resumed stage needs) without an fsync per request; only an OS crash can
        # lose the last few responses, which are then simply asked again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, body TEXT NOT NULL)")
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, body: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses (key, body) VALUES (?, ?)",
                             (key, json.dumps(body, ensure_ascii=False)))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend:
    """Any ``Backend`` with its ``sample`` calls cached per prompt in a ``RequestCache``.

    Why: a local model has no request cache of its own, yet reruns of a stage (a
    changed downstream setting, ``--from``, a crash) should not pay for the same
    generations twice. Local sampling is a pure function of (model, prompt ids,
    params, seed), so a stored completion IS the completion a rerun would draw;
    without a seed (fresh randomness asked for) nothing is cached. The key holds
    ``identity`` (which weights: name + a fingerprint of the files), the prompt and
    every sampling parameter. Prompts are looked up one by one, so a half-finished
    batch costs only its missing prompts. ``score`` and ``chat_prompt`` pass through.
    """

    def __init__(self, backend, cache: RequestCache, identity: str):
        self.backend, self.cache, self.identity = backend, cache, identity
        self.name = getattr(backend, "name", identity)

    @property
    def usage(self):
        return self.backend.usage

    def sample(self, prompts, params, progress=None):
        from phiforge.backends.base import Completion, SampleResult, Usage

        if params.seed is None:
            return self.backend.sample(prompts, params, progress=progress)
        keys = [self._key(p, params) for p in prompts]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        usage = Usage(cached_calls=len(prompts) - len(missing))
        if missing:
            res = self.backend.sample([prompts[i] for i in missing], params, progress=progress)
            usage.add(res.usage)
            for i, completions in zip(missing, res.completions):
                found[i] = [c.__dict__ for c in completions]
                self.cache.put(keys[i], found[i])
        self.backend.usage.cached_calls += usage.cached_calls
        return SampleResult([[Completion(**c) for c in cs] for cs in found], usage)

    def _key(self, prompt, params) -> str:
        prompt = prompt if isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict)) else list(prompt)
        return request_key("sample", {"prompt": prompt, "params": params.__dict__ | {"stop": list(params.stop)}},
                           salt=self.identity)

    def score(self, prompt_ids, continuation_ids):
        return self.backend.score(prompt_ids, continuation_ids)

    def chat_prompt(self, messages, add_generation_prompt: bool = True):
        return self.backend.chat_prompt(messages, add_generation_prompt=add_generation_prompt)

    def __getattr__(self, name):  # sample_continuations, tokenizer, ... of the wrapped backend
        return getattr(self.backend, name)
