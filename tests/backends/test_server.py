"""ManagedServer with a real process (python -m http.server) standing in for a model server."""

import os
import sys
import urllib.request

import pytest

from phiforge.backends.server import ManagedServer, llamacpp_command
from phiforge.errors import BackendError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as dead
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def test_starts_on_free_port_waits_for_health_and_stops(tmp_path):
    cmd = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with ManagedServer(cmd, health_path="/", startup_timeout=30, name="http.server") as srv:
        pid = srv.proc.pid
        with urllib.request.urlopen(srv.url + "/") as resp:
            assert resp.status == 200
        assert srv.url.startswith("http://127.0.0.1:")
    assert not _alive(pid)


def test_stops_on_error_inside_the_block(tmp_path):
    cmd = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    srv = ManagedServer(cmd, health_path="/", startup_timeout=30)
    with pytest.raises(RuntimeError):
        with srv:
            pid = srv.proc.pid
            raise RuntimeError("stage failed")
    assert not _alive(pid)


def test_child_processes_are_killed_with_the_group(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import subprocess, sys, http.server, socketserver\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "open(sys.argv[2], 'w').write(str(child.pid))\n"
        "signal_ignored = __import__('signal').signal(__import__('signal').SIGTERM, __import__('signal').SIG_IGN)\n"
        "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
        ".serve_forever()\n")
    pid_file = tmp_path / "child.pid"
    with ManagedServer([sys.executable, str(script), "{port}", str(pid_file)], health_path="/",
                       startup_timeout=30) as srv:
        child = int(pid_file.read_text())
        assert _alive(child)
        srv.stop(grace=1.0)  # parent ignores SIGTERM: SIGKILL of the whole group follows
    assert not _alive(child)


def test_server_that_dies_reports_its_log():
    cmd = [sys.executable, "-c", "import sys; print('model file is corrupt'); sys.exit(3)"]
    with pytest.raises(BackendError, match=r"exited with code 3[\s\S]*model file is corrupt"):
        ManagedServer(cmd, startup_timeout=30, name="llama.cpp").start()


def test_llamacpp_command_binds_loopback():
    cmd = llamacpp_command("/x/model.gguf", n_ctx=1024, threads=2)
    assert cmd[1:3] == ["-m", "llama_cpp.server"] and "127.0.0.1" in cmd and "{port}" in cmd
    assert cmd[cmd.index("--n_ctx") + 1] == "1024"
