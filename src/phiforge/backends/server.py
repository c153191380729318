"""Start, health-check and always stop a local model server process.

phiforge starts servers itself (llama.cpp's OpenAI-compatible server for the
bundled teacher; any command for others) on 127.0.0.1 with a free port, waits
until the health endpoint answers, and stops the whole process group on exit:
normal exit, an exception, Ctrl-C, or interpreter shutdown (atexit). A server
that dies during start-up fails with the tail of its log, not a timeout.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from phiforge.errors import BackendError, ConfigError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedServer:
    """A server subprocess (own process group) with health wait and guaranteed stop.

    ``command`` may contain ``{port}``; it is filled with ``port``, by default a free one.
    """

    def __init__(self, command: Sequence[str], health_path: str = "/health", startup_timeout: float = 120.0,
                 env: dict | None = None, name: str = "server", port: int | None = None):
        self.port = port or free_port()
        self.command = [c.replace("{port}", str(self.port)) for c in command]
        self.health_path, self.startup_timeout, self.name = health_path, startup_timeout, name
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"phiforge-{name}-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ManagedServer":
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env={**os.environ, **(self.env or {})})
        except FileNotFoundError as e:
            raise ConfigError(f"cannot start {self.name}: {e}") from e
        finally:
            log.close()
        atexit.register(self.stop)
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                self.stop()
                raise BackendError(f"{self.name} exited with code {code} during start-up "
                                   f"({' '.join(self.command)}); last log lines:\n{tail}")
            if self._healthy():
                return
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise BackendError(f"{self.name} did not become healthy at {self.url}{self.health_path} within "
                           f"{self.startup_timeout:.0f}s; last log lines:\n{tail}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=2) as resp:
                return resp.status < 500
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``grace`` seconds. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=grace)

    def wait(self) -> int:
        """Block until the server exits (e.g. to serve in the foreground); returns its exit code."""
        return self.proc.wait() if self.proc is not None else 0

    def __enter__(self) -> "ManagedServer":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(os.getpgid(proc.pid), sig)
    except (ProcessLookupError, PermissionError):
        pass


def llamacpp_command(gguf_path: str | Path, n_ctx: int = 2048, threads: int | None = None,
                     extra: Sequence[str] = ()) -> list[str]:
    """The command line of llama-cpp-python's OpenAI-compatible server for a GGUF file."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host", "127.0.0.1",
           "--port", "{port}", "--n_ctx", str(n_ctx)]
    if threads:
        cmd += ["--n_threads", str(threads)]
    return cmd + list(extra)
