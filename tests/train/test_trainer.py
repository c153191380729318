import json

import numpy as np
import pytest
import torch

from phiforge.model.presets import build_config, build_model
from phiforge.train.checkpoint import list_checkpoints
from phiforge.train.mixture import MixtureSampler
from phiforge.train.packing import TokenSource
from phiforge.train.trainer import Trainer, TrainSpec, read_metrics

VOCAB, SEQ = 64, 16


def _model(seed=0):
    cfg = build_config("tiny", {"vocab_size": VOCAB, "num_hidden_layers": 2, "hidden_size": 32,
                                "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2})
    return build_model(cfg, seed=seed)


def _sampler(seed=0):
    """Learnable documents: counting runs ``k, k+1, k+2, ...`` (mod vocab, skipping 0)."""
    rng = np.random.default_rng(0)
    docs = [[1 + (int(k) + j) % (VOCAB - 1) for j in range(int(n))]
            for k, n in zip(rng.integers(0, VOCAB, 200), rng.integers(4, 30, 200))]
    return MixtureSampler({"s": TokenSource.from_token_lists("s", docs, 0)}, {"s": 1.0}, SEQ, seed=seed)


def _spec(**kw):
    base = dict(max_steps=8, micro_batch_size=4, seq_len=SEQ, lr=1e-2, warmup_steps=2, log_every=100,
                eval_every=4, checkpoint_every=3)
    return TrainSpec(**{**base, **kw})


def _losses(path):
    return [r["loss"] for r in read_metrics(path / "metrics.jsonl") if r["kind"] == "train"]


def test_params_change_and_loss_drops(tmp_path):
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    Trainer(model, _spec(max_steps=30, lr=3e-2, warmup_steps=3), _sampler(), tmp_path, log=lambda m: None).fit()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    losses = _losses(tmp_path)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0


def test_interrupted_and_resumed_run_reproduces_losses(tmp_path):
    full = tmp_path / "full"
    Trainer(_model(), _spec(), _sampler(), full, log=lambda m: None).fit()
    part = tmp_path / "part"
    Trainer(_model(), _spec(), _sampler(), part, log=lambda m: None, stop_after=5).fit()  # "crash" after step 5
    assert [p.name for p in list_checkpoints(part / "checkpoints")] == ["step_000003"]
    resumed = Trainer(_model(seed=99), _spec(), _sampler(), part, log=lambda m: None)
    resumed.fit()
    assert _losses(part) == pytest.approx(_losses(full), rel=1e-6, abs=1e-7)
    full_eval = [r for r in read_metrics(full / "metrics.jsonl") if r["kind"] == "eval"]
    part_eval = [r for r in read_metrics(part / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in part_eval] == [r["step"] for r in full_eval]


def test_micro_batch_times_accumulation_equivalence(tmp_path):
    a, b = _model(), _model()
    Trainer(a, _spec(micro_batch_size=8, grad_accum=1, max_steps=3), _sampler(), tmp_path / "a",
            log=lambda m: None).fit()
    Trainer(b, _spec(micro_batch_size=2, grad_accum=4, max_steps=3), _sampler(), tmp_path / "b",
            log=lambda m: None).fit()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=2e-5, rtol=1e-4)


def test_metrics_rows_and_log_line(tmp_path):
    lines = []
    Trainer(_model(), _spec(max_steps=2, log_every=1), _sampler(), tmp_path, log=lines.append).fit()
    row = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert {"step", "loss", "lr", "tokens_per_s", "elapsed_s", "tokens"} <= set(row)
    assert any(line.startswith("step      1/2 | loss") and "tok/s" in line and "elapsed" in line for line in lines)


def test_half_written_checkpoint_is_ignored(tmp_path):
    Trainer(_model(), _spec(max_steps=3), _sampler(), tmp_path, log=lambda m: None).fit()
    (tmp_path / "checkpoints" / ".step_000006.tmp-1").mkdir()
    (tmp_path / "checkpoints" / "step_000009").mkdir()  # no state.json: incomplete
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_000003"]
    state = json.loads((tmp_path / "checkpoints" / "step_000003" / "state.json").read_text())
    assert state["step"] == 3 and "sampler" in state
