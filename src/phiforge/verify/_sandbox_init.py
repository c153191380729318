"""The sandbox's first process: set up the jail, then run the untrusted program.

Run by :mod:`phiforge.verify.sandbox` as ``python -I -S -B _sandbox_init.py SPEC_FD``
(never imported by the library). Standard library only, nothing that reads the
environment, and as few imports as possible before the program runs (``json``
alone would cost ~10 ms of start-up, more than the program's own check), because it
starts as root inside fresh namespaces and sits on the hot path of every code check
(Phi-4 report §2.1 / App. D execution-validated code, §4.3 PTS):

* The spec arrives as ``marshal`` data on an inherited file descriptor (a memfd),
  not on the command line: ``/proc/1/cmdline`` is world-readable inside the jail.
  It is read and closed before anything else, and emptied before the program runs.
* ``namespaces`` / ``userns`` mode: it is PID 1 of a new PID namespace. It hides
  directories behind empty tmpfs mounts, binds the work folder (and any exposed
  paths, read-only) back in, then forks the program and reaps every process until
  the program ends. When it exits, the kernel kills whatever is left in the
  namespace (a fork bomb that called ``setsid`` included).
* ``rlimits`` mode: no namespaces; the process itself becomes the program.

Becoming the program: rlimits, close the status fd, ``PR_SET_NO_NEW_PRIVS``, the
per-job uid, umask, work dir; then either

* **in-process** (default): compile ``main.py`` and run it in a fresh ``__main__``
  module of this already-initialised interpreter (saves the second ~17 ms Python
  start-up). Exit codes, ``SystemExit``, uncaught tracebacks (with no frame of this
  file), ``KeyboardInterrupt`` (dies by SIGINT), atexit handlers, the join of
  non-daemon threads and the final flush are those of ``python main.py``, because a
  ``SystemExit`` is left to the interpreter's own top-level handling; or
* **exec** (``spec["exec"]``): ``execve`` a pristine ``python main.py``.

The program's exit is written to ``status_fd`` as ``exit N`` or ``signal N`` so the
host can tell ``sys.exit(137)`` from a SIGKILL (PID 1 cannot re-raise a signal).
"""

import _ctypes
import marshal
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38


class c_int(_ctypes._SimpleCData):
    _type_ = "i"


class c_ulong(_ctypes._SimpleCData):
    _type_ = "L"


class LibcFunction(_ctypes.CFuncPtr):
    """``ctypes.CDLL(None, use_errno=True).name`` from ``_ctypes`` alone: ``import ctypes`` costs ~3 ms
    (its class zoo, ``struct``, ``types``) on every job; these three classes are all we need."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = c_int


class Libc:
    _handle = _ctypes.dlopen(None, os.RTLD_NOW)


def main() -> None:
    spec = read_spec(int(sys.argv[1]))
    if spec["mounts"]:
        hide_and_bind(spec)
    if spec["pid1"]:
        pid = os.fork()
        if pid != 0:
            supervise(spec["status_fd"], pid)  # PID 1; never returns
    become_program(spec)


def read_spec(fd: int) -> dict:
    """The spec from the inherited fd, which is closed at once (the program never sees it)."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return marshal.loads(b"".join(chunks))


def libc_call(name: str, *args) -> None:
    """Call a libc function (bytes/None/c_int/c_ulong arguments); raise OSError with errno on failure."""
    if LibcFunction((name, Libc))(*args) != 0:
        err = _ctypes.get_errno()
        raise OSError(err, f"{name}{args[:2]}: {os.strerror(err)}")


def mount(src: str, target: str, fstype, flags: int, data) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    libc_call("mount", enc(src), enc(target), enc(fstype), c_ulong(flags), enc(data))


def prctl(option: int, value: int) -> None:
    libc_call("prctl", c_int(option), c_ulong(value), c_ulong(0), c_ulong(0), c_ulong(0))


def hide_and_bind(spec: dict) -> None:
    """Empty tmpfs over each hidden path; bind the work dir and exposed paths back in."""
    # Open the sources first: once a tmpfs covers them, their paths no longer resolve.
    binds = [(os.open(src, os.O_PATH | os.O_DIRECTORY), dst, ro) for src, dst, ro in spec["binds"]]
    for path in spec["hide"]:
        if os.path.isdir(path) and not os.path.islink(path):
            mode = "1777" if path in spec["writable_hide"] else "755"
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmpfs_mb']}m,mode={mode}")
    for fd, dst, ro in binds:
        os.makedirs(dst, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", dst, None, MS_BIND | MS_REC, None)
        if ro:
            mount("none", dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
        os.close(fd)


def supervise(status_fd: int, pid: int) -> None:
    """PID 1 after the fork: reap every process until the program ends, report its exit, exit."""
    status = 0
    while True:
        try:
            done, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            status = st
            break
    report(status_fd, status)
    os._exit(0)


def report(fd: int, status: int) -> None:
    text = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    os.write(fd, text.encode())
    os.close(fd)


def become_program(spec: dict) -> None:
    """Drop to the program's limits and uid, then exec it or run it here (setup failure: exit 127)."""
    try:
        drop_privileges(spec)
        if spec["exec"]:
            os.execve(spec["argv"][0], spec["argv"], spec["env"])
        program = prepare_program(spec)
    except BaseException:
        import traceback
        traceback.print_exc()
        os._exit(127)
    run_program(*program)


def drop_privileges(spec: dict) -> None:
    """Limits, no new privileges, the unprivileged per-job uid, umask, work dir."""
    for name, soft, hard in spec["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if spec["status_fd"] is not None:
        os.close(spec["status_fd"])
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if spec["uid"] is not None:
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
        prctl(PR_SET_DUMPABLE, 1)  # as after an exec: the job may read its own /proc entries
    os.umask(0o077)
    os.chdir(spec["cwd"])


def prepare_program(spec: dict) -> tuple:
    """Turn this interpreter into ``python main.py``'s: argv, path, environment, a fresh ``__main__``."""
    path = os.path.join(spec["cwd"], "main.py")
    sys.argv[:] = ["main.py"]
    if hasattr(sys, "orig_argv"):  # 3.10+
        sys.orig_argv[:] = spec["argv"]
    sys.path.insert(0, spec["cwd"])  # the work dir first, so the job's extra files import
    sys.dont_write_bytecode = "-B" in spec["argv"]
    os.environ.clear()
    os.environ.update(spec["env"])
    if "-S" not in spec["argv"]:
        import site
        site.main()
    module = type(sys)("__main__")
    module.__annotations__ = {}
    module.__builtins__ = sys.modules["builtins"]
    module.__file__ = path
    module.__cached__ = None
    module.__loader__ = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", path)
    sys.modules["__main__"] = module
    spec.clear()  # nothing of the jail's set-up stays reachable from the program's frames
    return module, path


def run_program(module, path: str) -> None:
    """Run the program as the interpreter runs a script; only SystemExit leaves this function."""
    import atexit
    atexit.register(fast_exit)  # registered first, so it runs after every handler the program adds
    try:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except SystemExit as e:
        EXIT["code"] = exit_code(e.code)
        raise  # the interpreter prints a non-int code and joins non-daemon threads, then runs atexit
    except BaseException as e:
        e.__traceback__ = e.__traceback__.tb_next  # without this file's frame, as ``python main.py`` shows it
        sys.excepthook(type(e), e, e.__traceback__)
        EXIT["code"], EXIT["sigint"] = 1, isinstance(e, KeyboardInterrupt)
        raise SystemExit(1) from None
    EXIT["code"] = 0


EXIT = {"code": None, "sigint": False}


def exit_code(code) -> int:
    """The status ``python main.py`` exits with for ``SystemExit(code)``."""
    if code is None:
        return 0
    return int(code) if isinstance(code, int) else 1


def fast_exit() -> None:
    """The last atexit handler: threads are joined and handlers ran; flush stdio and leave without
    tearing the interpreter down (~3 ms, mostly copy-on-write faults of the forked heap). Python
    does not promise ``__del__`` for objects alive at exit either. An uncaught KeyboardInterrupt
    ends by SIGINT as in ``python main.py``; on a failing flush, normal finalization reports it (120)."""
    if EXIT["code"] is None:
        return  # left by some other path (e.g. the program cleared atexit): finalize normally
    for stream in dict.fromkeys((sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)):
        if stream is not None and not getattr(stream, "closed", True):
            try:
                stream.flush()
            except Exception:
                return
    if EXIT["sigint"]:
        import _signal
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGINT)
    os._exit(EXIT["code"])


if __name__ == "__main__":
    main()
