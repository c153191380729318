"""The ``phiforge models`` and ``phiforge serve-teacher`` commands."""

from __future__ import annotations

import time

from phiforge.backends.base import SamplingParams

CHECK_PROMPT = [{"role": "user", "content": "Say hello in five words."}]


def show_models(recipe, check: bool = False, dry_run: bool = False, out=print) -> int:
    """Print each role's model; with ``check``, open it and sample one short greedy reply."""
    from phiforge.run.pipeline import run_dir_for

    for role in recipe.models.roles():
        ref = recipe.models.get(role)
        out(f"{role:<10} {ref.describe()}")
        if check and not dry_run and not (role == "policy" and recipe.models.policy is None):
            _check(role, ref, run_dir_for(recipe), out)
    return 0


def _check(role: str, ref, run_dir, out) -> None:
    from phiforge.backends.registry import open_backend

    t0 = time.perf_counter()
    with open_backend(ref, run_dir=run_dir, role=role) as backend:
        opened = time.perf_counter() - t0
        res = backend.sample([CHECK_PROMPT], SamplingParams(temperature=0.0, max_tokens=16, seed=0))
        c = res.completions[0][0]
        rate = len(c.token_ids) / max(res.usage.seconds, 1e-9)
        out(f"           opened in {opened:.1f}s; reply {c.text.strip()!r} ({len(c.token_ids)} tokens, "
            f"{rate:.1f} tok/s)")
        report = getattr(backend, "probe_report", None)
        for feature, note in (report.notes.items() if report else ()):
            out(f"           {feature}: {note}")


def serve_teacher(port: int = 0, n_ctx: int = 4096, out=print) -> int:
    """Serve the bundled teacher on 127.0.0.1 in the foreground until Ctrl-C (then stop it cleanly)."""
    import importlib.util

    from phiforge.backends.registry import LLAMACPP_INSTALL
    from phiforge.backends.server import ManagedServer, llamacpp_command
    from phiforge.backends.teacher import TEACHER_NAME, teacher_gguf_path
    from phiforge.errors import ConfigError

    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(f"serve-teacher needs llama.cpp's server: `{LLAMACPP_INSTALL}`")
    cmd = llamacpp_command(teacher_gguf_path(), n_ctx=n_ctx, extra=("--model_alias", TEACHER_NAME))
    with ManagedServer(cmd, health_path="/v1/models", startup_timeout=300, name="llama.cpp",
                       port=port or None) as server:
        out(f"serving {TEACHER_NAME} at {server.url}/v1 (OpenAI-compatible; model name {TEACHER_NAME!r}); "
            "Ctrl-C stops it")
        return server.wait()
