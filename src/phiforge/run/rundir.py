"""The run directory: one folder per stage, ``stats.json`` and a completion marker.

``runs/<name>/<stage>/_COMPLETE`` is written last, after every output of the stage
is in place, and records a fingerprint of the config the stage ran with. A rerun
skips a stage only if its marker exists *and* its fingerprint matches, so a stage
killed half-way (no marker) is never mistaken for finished output: plain stages
are wiped and redone, training stages resume from their last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

from phiforge.data.records import write_json

MARKER = "_COMPLETE"
STARTED = "_STARTED"


def runs_root(out_dir: str) -> Path:
    """Parent of run folders: ``$PHIFORGE_RUNS`` if set, else the recipe's ``run.out_dir``."""
    return Path(os.environ.get("PHIFORGE_RUNS") or out_dir)


def fingerprint(payload) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_marker(stage_dir: Path) -> dict | None:
    path = stage_dir / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_marker(stage_dir: Path, fp: str, payload: dict) -> None:
    write_json(stage_dir / MARKER, {"fingerprint": fp, "config": payload,
                                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def prepare_stage_dir(stage_dir: Path, fp: str, resumable: bool, log) -> None:
    """Make ``stage_dir`` ready for a (re)start: wipe stale partial output, keep resumable state."""
    started = stage_dir / STARTED
    same_config = started.is_file() and started.read_text().strip() == fp
    if stage_dir.exists() and not (resumable and same_config):
        if any(stage_dir.iterdir()):
            log(f"removing partial output of an unfinished earlier attempt: {stage_dir}")
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    started.write_text(fp + "\n")


def clear_stage(stage_dir: Path) -> None:
    shutil.rmtree(stage_dir, ignore_errors=True)


class PeakRSS:
    """Sample this process's resident memory while a stage runs (peak in MB)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()

    def __enter__(self):
        import psutil
        self._proc = psutil.Process()
        self.peak_mb = self._proc.memory_info().rss / 2**20
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)
        return False
