"""Turn a recipe's ``[models.<role>]`` entry into a live ``Backend``, and clean it up after.

A recipe names each model a stage needs by role (``teacher``, ``judge``, more under
``models.others``) and says how to reach it (``recipe.schema.ModelRef``); the bundled
teacher is the default for every role. ``open_backend`` builds the backend inside an
``ExitStack`` so that whatever it started (a llama.cpp server process, SQLite
caches) is stopped when the stage ends, on errors and Ctrl-C too.

The three kinds:

* ``local``: ``LocalBackend`` in-process (bundled teacher, any HF folder, or a model
  this run trained: ``stage:<name>`` → ``runs/<run>/<name>/model``).
* ``http``: ``HTTPBackend`` on ``base_url`` with retries, the run's request cache
  (``runs/<run>/cache/requests.sqlite``) and the server profile (probed with
  ``profile = "auto"``).
* ``llamacpp``: phiforge starts llama.cpp's OpenAI-compatible server on a free
  loopback port (``ManagedServer``) and talks to it over HTTP; for the bundled
  model the teacher's tokenizer enables token-id prompts (round-trip checked) and
  ``score`` goes to the local copy of the same weights, loaded only if asked.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from phiforge.errors import ConfigError

BUNDLED = "bundled"
LLAMACPP_INSTALL = "pip install 'llama-cpp-python[server]'"


def request_cache_path(run_dir: Path) -> Path:
    """One request cache per run, shared by every stage and role (keys include the model)."""
    return Path(run_dir) / "cache" / "requests.sqlite"


@contextlib.contextmanager
def open_backend(ref, *, run_dir: Path | None = None, role: str = "model", progress=None) -> Iterator:
    """The ``Backend`` for a ``ModelRef``; servers it started stop when the ``with`` block ends."""
    with contextlib.ExitStack() as stack:
        if ref.backend == "local":
            backend = _cached_local(_local(ref, run_dir, role, progress), ref, run_dir)
        elif ref.backend == "http":
            backend = _http(ref, ref.base_url, ref.model, run_dir, role, progress, _tokenizer(ref.tokenizer, run_dir))
        else:
            backend = _llamacpp(ref, run_dir, role, progress, stack)
        if hasattr(backend, "close") and callable(getattr(type(backend), "close", None)):
            stack.callback(backend.close)  # runs before a server this block started is stopped
        yield backend


def _local(ref, run_dir: Path | None, role: str, progress):
    from phiforge.backends.local import LocalBackend, _resolve_device, _resolve_dtype

    device = _resolve_device(ref.device)
    if ref.model == BUNDLED:
        from phiforge.backends.teacher import TEACHER_NAME, load_teacher

        model, tok = load_teacher(dtype=_resolve_dtype(ref.dtype, device))
        return LocalBackend(model, tok, device=device, batch_size=ref.batch_size, progress=progress,
                            name=f"{role}=local:{TEACHER_NAME}")
    path = _model_folder(ref.model, run_dir)
    return LocalBackend.from_pretrained(path, device=device, dtype=ref.dtype, batch_size=ref.batch_size,
                                        progress=progress, name=f"{role}=local:{path}")


def _cached_local(backend, ref, run_dir: Path | None):
    """Seeded local sampling is deterministic: cache it per prompt in the run's request cache."""
    if not ref.cache or run_dir is None:
        return backend
    from phiforge.backends.cache import CachedBackend, RequestCache

    identity = f"local:{ref.model}:{_weights_fingerprint(backend.model)}"
    return CachedBackend(backend, RequestCache(request_cache_path(run_dir)), identity)


def _weights_fingerprint(model) -> str:
    """Cheap identity of loaded weights: a hash of a few parameter values and the shapes."""
    import hashlib

    h = hashlib.sha256()
    for name, p in list(model.named_parameters())[:: max(1, len(list(model.parameters())) // 16)]:
        flat = p.detach().reshape(-1)
        h.update(name.encode() + str(tuple(p.shape)).encode() + flat[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _model_folder(model: str, run_dir: Path | None) -> Path:
    if not model.startswith("stage:"):
        return Path(model).expanduser()
    stage = model.split(":", 1)[1]
    if run_dir is None:
        raise ConfigError(f"model = {model!r} names a stage of a run, but no run folder is known here; "
                          "give a model folder path instead")
    path = Path(run_dir) / stage / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"model = {model!r}: {path} holds no finished model; run the '{stage}' stage first "
                          f"(phiforge run --only {stage})")
    return path


def _http(ref, base_url: str, model: str, run_dir: Path | None, role: str, progress, tokenizer,
          profile: str | None = None, scorer=None):
    from phiforge.backends.http import HTTPBackend

    cache = request_cache_path(run_dir) if (ref.cache and run_dir is not None) else None
    return HTTPBackend(base_url, model, profile=profile or ref.profile, api_key_env=ref.api_key_env,
                       concurrency=ref.concurrency, max_retries=ref.max_retries, timeout=ref.timeout_s,
                       cache_path=cache, tokenizer=tokenizer, scorer=scorer, progress=progress,
                       name=f"{role}=http:{model}@{base_url}")


def _tokenizer(spec: str | None, run_dir: Path | None = None):
    """``None``, the bundled teacher's tokenizer, or one loaded from an HF folder.

    ``stage:<name>`` is the folder of a model this run trained, e.g. ``stage:sft`` for
    a vLLM server serving ``runs/<run>/sft/model`` (PTS needs its chat template).
    """
    if spec is None:
        return None
    from transformers import AutoTokenizer

    if spec == BUNDLED:
        from phiforge.backends.teacher import teacher_model_dir

        return AutoTokenizer.from_pretrained(str(teacher_model_dir()))
    folder = _model_folder(spec, run_dir) if spec.startswith("stage:") else Path(spec).expanduser()
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"tokenizer = {spec!r}: cannot load a tokenizer from it ({e}); give a folder with "
                          "tokenizer.json / tokenizer_config.json, or 'bundled'") from e


def _llamacpp(ref, run_dir: Path | None, role: str, progress, stack: contextlib.ExitStack):
    import importlib.util

    from phiforge.backends.server import ManagedServer, llamacpp_command

    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(f"models.{role}: backend = 'llamacpp' needs llama.cpp's server: `{LLAMACPP_INSTALL}` "
                          "(compiles from source, ~8 min on 2 cores the first time)")
    bundled = ref.model == BUNDLED
    if bundled:
        from phiforge.backends.teacher import TEACHER_NAME, teacher_gguf_path

        gguf, served = teacher_gguf_path(), TEACHER_NAME
    else:
        gguf, served = Path(ref.model).expanduser(), Path(ref.model).stem
        if not gguf.is_file():
            raise ConfigError(f"models.{role}.model = {ref.model!r}: no such GGUF file")
    server = stack.enter_context(ManagedServer(
        llamacpp_command(gguf, n_ctx=ref.n_ctx, threads=ref.threads, extra=("--model_alias", served)),
        health_path="/v1/models", startup_timeout=300, name=f"llama.cpp ({role})"))
    tokenizer = _tokenizer(ref.tokenizer or (BUNDLED if bundled else None), run_dir)
    scorer = _LazyTeacherScorer(ref) if bundled else None
    return _http(ref, server.url, served, run_dir, role, progress, tokenizer, profile="llama.cpp",
                 scorer=scorer)


class _LazyTeacherScorer:
    """``score`` for the llama.cpp-served bundled teacher, on the same weights loaded locally.

    llama.cpp's echoed prompt log-probs are wrong (``probe``), so exact
    scoring goes to ``LocalBackend`` on the dequantised weights of the same GGUF,
    loaded at the first ``score`` call only.
    """

    def __init__(self, ref):
        self.ref, self._backend = ref, None

    def score(self, prompt_ids, continuation_ids):
        if self._backend is None:
            from phiforge.backends.local import LocalBackend, _resolve_device, _resolve_dtype
            from phiforge.backends.teacher import load_teacher

            device = _resolve_device(self.ref.device)
            model, tok = load_teacher(dtype=_resolve_dtype(self.ref.dtype, device))
            self._backend = LocalBackend(model, tok, device=device, batch_size=self.ref.batch_size)
        return self._backend.score(prompt_ids, continuation_ids)
