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
