"""The sandbox's first process: set up the jail, then start the untrusted program.

Run by :mod:`phiforge.verify.sandbox` as ``python -I -S _sandbox_init.py SPEC_JSON``
(never imported by the library). Standard library only, and nothing that reads
the environment, because it starts as root inside fresh namespaces:

* ``namespaces`` / ``userns`` mode: it is PID 1 of a new PID namespace. It hides
  directories behind empty tmpfs mounts, binds the work folder (and any exposed
  paths, read-only) back in, then forks the program and reaps every process until
  the program ends. When it exits, the kernel kills whatever is left in the
  namespace (a fork bomb that called ``setsid`` included).
* ``rlimits`` mode: no namespaces; it only sets limits, drops privileges and execs.

The program's exit is written to ``status_fd`` as ``exit N`` or ``signal N`` so the
host can tell ``sys.exit(137)`` from a SIGKILL (PID 1 cannot re-raise a signal).
"""

import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PR_SET_NO_NEW_PRIVS = 38


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["mounts"]:
        hide_and_bind(spec)
    if spec["pid1"]:
        supervise(spec)
    else:
        become_program(spec)


def libc_call(name: str, *args) -> None:
    """Call a libc function; raise OSError with errno on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}{args[:2]}: {os.strerror(err)}")


def mount(src: str, target: str, fstype, flags: int, data) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    libc_call("mount", enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


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


def supervise(spec: dict) -> None:
    """PID 1: fork the program, reap everything, report the program's exit, then exit."""
    pid = os.fork()
    if pid == 0:
        try:
            become_program(spec)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(127)
    status = 0
    while True:
        try:
            done, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            status = st
            break
    report(spec["status_fd"], status)
    os._exit(0)


def report(fd: int, status: int) -> None:
    text = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    os.write(fd, text.encode())
    os.close(fd)


def become_program(spec: dict) -> None:
    """Limits, no new privileges, unprivileged user, work dir, then exec the program."""
    for name, soft, hard in spec["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if spec["status_fd"] is not None:
        os.close(spec["status_fd"])
    libc_call("prctl", PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
              ctypes.c_ulong(0))
    if spec["uid"] is not None:
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
    os.umask(0o077)
    os.chdir(spec["cwd"])
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


if __name__ == "__main__":
    main()
