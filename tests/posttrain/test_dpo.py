"""DPO on exact token ids: loss and gradients against a naive implementation, sampler, resume, training."""

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from phiforge.errors import ConfigError, DataError
from phiforge.model.presets import build_config, build_model
from phiforge.posttrain import dpo
from phiforge.posttrain.pairs import TokenPair
from phiforge.train.trainer import read_metrics

VOCAB = 64
BETA = 0.3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run ~100x faster on one thread than on two when the 2-core box is shared (OpenMP spin)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed=0):
    cfg = build_config("tiny", {"vocab_size": VOCAB, "num_hidden_layers": 2, "hidden_size": 32,
                                "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                                "max_position_embeddings": 128})
    return build_model(cfg, seed=seed)


def _ids(g, n):
    return torch.randint(5, VOCAB, (n,), generator=g).tolist()


def _single_pairs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [TokenPair(f"s{i}", "pts", _ids(g, 3 + i % 5), _ids(g, 1), _ids(g, 1)) for i in range(n)]


def _full_pairs(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [TokenPair(f"f{i}", "judge_accuracy", _ids(g, 2 + i % 4), _ids(g, 1 + (i * 3) % 5), _ids(g, 2 + i % 3))
            for i in range(n)]


def _naive_logp(model, prompt, response):
    """Explicit: full forward of prompt+response, log_softmax over the vocabulary, sum the response tokens."""
    logits = model(input_ids=torch.tensor([prompt + response]), use_cache=False).logits[0]
    logp = F.log_softmax(logits.float(), dim=-1)
    return sum(logp[len(prompt) - 1 + k, tok] for k, tok in enumerate(response))


def _naive_loss(model, pairs, beta, label_smoothing=0.0):
    losses = []
    for p in pairs:
        delta = (_naive_logp(model, p.prompt_ids, p.chosen_ids) - _naive_logp(model, p.prompt_ids, p.rejected_ids)
                 - (p.ref_chosen_logp - p.ref_rejected_logp))
        z = beta * delta
        losses.append(-(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z))
    return torch.stack(losses).mean()


def _with_reference(pairs, seed=7):
    """Reference log-probs from a different random model, so Δref is not zero."""
    ref = _model(seed)
    with torch.no_grad():
        return [replace(p, ref_chosen_logp=float(_naive_logp(ref, p.prompt_ids, p.chosen_ids)),
                            ref_rejected_logp=float(_naive_logp(ref, p.prompt_ids, p.rejected_ids))) for p in pairs]


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _compare(pairs, label_smoothing=0.0):
    fast, naive = _model(), _model()
    loss, metrics = dpo.dpo_objective(BETA, label_smoothing)(fast, dpo.collate_pairs(pairs), dpo._no_autocast)
    loss.backward()
    expected = _naive_loss(naive, pairs, BETA, label_smoothing)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    for a, b in zip(_grads(fast), _grads(naive)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in _grads(fast))
    return metrics


def test_single_token_shared_forward_equals_two_full_forwards():
    pairs = _with_reference(_single_pairs(6))
    batch = dpo.collate_pairs(pairs)
    assert len(batch.groups) == 1 and batch.groups[0].input_ids_RL.shape[0] == 6  # one row per pair
    model = _model()
    chosen, rejected = dpo.compute_logps(model, batch)
    with torch.no_grad():
        for p, c, r in zip(pairs, chosen, rejected):
            assert c.item() == pytest.approx(_naive_logp(model, p.prompt_ids, p.chosen_ids).item(), abs=1e-5)
            assert r.item() == pytest.approx(_naive_logp(model, p.prompt_ids, p.rejected_ids).item(), abs=1e-5)
    unshared = dpo.collate_pairs(pairs, shared_forward=False)
    assert len(unshared.groups) == 1 and unshared.groups[0].input_ids_RL.shape[0] == 12
    for a, b in zip((chosen, rejected), dpo.compute_logps(model, unshared)):
        assert torch.allclose(a, b, atol=1e-5)
    _compare(pairs)


def test_full_sequence_loss_and_grads_in_a_mixed_padded_batch():
    tail = [replace(p, id="tail") for p in _full_pairs(1, 3)]
    pairs = _with_reference([x for pair in zip(_full_pairs(5), _single_pairs(5)) for x in pair] + tail)
    batch = dpo.collate_pairs(pairs)
    full = batch.groups[1]
    assert full.input_ids_RL.shape[0] == 2 * 6 and (full.attention_mask_RL == 0).any()  # padded rows
    assert batch.n_tokens == sum(len(p.prompt_ids) for p in pairs if p.single_token) + sum(
        2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs if not p.single_token)
    _compare(pairs)


def test_conservative_label_smoothing_matches_formula():
    _compare(_with_reference(_full_pairs(3) + _single_pairs(2)), label_smoothing=0.2)


def test_dpo_loss_formula_and_rewards():
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    losses, cr, rj = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    z = 0.5 * torch.tensor([(-1.0 + 1.5) - (-2.0 + 1.5), (-3.0 + 2.0) - (-1.0 + 2.0)])
    expected = -0.9 * torch.log(torch.sigmoid(z)) - 0.1 * torch.log(torch.sigmoid(-z))
    assert torch.allclose(losses, expected)
    assert torch.allclose(cr, torch.tensor([0.25, -0.5])) and torch.allclose(rj, torch.tensor([-0.25, 0.5]))
    m = dpo.reward_metrics(cr, rj)
    assert m["reward_accuracy"] == 0.5 and m["reward_margin"] == pytest.approx(-0.25)


def test_policy_equal_to_reference_gives_log2_and_zero_rewards():
    pairs = _full_pairs(3) + _single_pairs(3)
    model = _model()
    with_ref = dpo.precompute_reference_logps(model, pairs, batch_size=4)
    loss, metrics = dpo.dpo_objective(BETA)(model, dpo.collate_pairs(with_ref), dpo._no_autocast)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert abs(metrics["reward_margin"]) < 1e-5 and metrics["reward_accuracy"] == 0.0


def test_bf16_autocast_reference_matches_policy_at_step_zero():
    """The reference uses the Trainer's autocast, so the starting policy has ~zero rewards in bf16 too."""
    pairs = _full_pairs(4) + _single_pairs(4)
    model, autocast = _model(), dpo.autocast_for("bf16", "cpu")
    with_ref = dpo.precompute_reference_logps(model, pairs, batch_size=3, autocast=autocast)
    loss, metrics = dpo.dpo_objective(BETA)(model, dpo.collate_pairs(with_ref), autocast)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2), abs=1e-3) and abs(metrics["reward_margin"]) < 1e-3


def test_precompute_batches_by_length_and_reports_progress():
    pairs = _full_pairs(5) + _single_pairs(4)
    model = _model()
    calls, seen = [], []
    hook = model.base_model.register_forward_hook(lambda *a: calls.append(1))
    out = dpo.precompute_reference_logps(model, pairs, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    hook.remove()
    assert seen == [(4, 9), (8, 9), (9, 9)] and len(calls) <= 3 * 2  # ≤ 2 forwards (shapes) per batch
    assert [p.id for p in out] == [p.id for p in pairs] and all(p.has_reference for p in out)
    with torch.no_grad():
        for p in out:
            assert p.ref_chosen_logp == pytest.approx(_naive_logp(model, p.prompt_ids, p.chosen_ids).item(), abs=1e-5)
    assert model.training  # mode restored


def test_sampler_shuffles_epochs_resumes_and_shards():
    pairs = _with_reference(_single_pairs(7))
    s = dpo.PairSampler(pairs, seed=3)
    first = [p.id for p in s.next_pairs(7)]
    assert sorted(first) == sorted(p.id for p in pairs)  # one epoch = every pair once
    second = [p.id for p in s.next_pairs(7)]
    assert sorted(second) == sorted(first) and second != first  # reshuffled
    state = s.state_dict()
    cont = [p.id for p in s.next_pairs(5)]
    again = dpo.PairSampler(pairs, seed=3)
    again.load_state_dict(state)
    assert [p.id for p in again.next_pairs(5)] == cont and s.epochs_so_far() == pytest.approx(19 / 7)
    ranks = [dpo.PairSampler(pairs, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert [p.id for p in ranks[0].next_pairs(3)] == first[0:6:2]
    assert [p.id for p in ranks[1].next_pairs(3)] == first[1:7:2]
    with pytest.raises(ConfigError, match="written for 7 pairs with seed 3"):
        dpo.PairSampler(pairs[:5], seed=3).load_state_dict(state)


def test_sampler_and_eval_set_need_reference():
    with pytest.raises(DataError, match="no reference log-probs"):
        dpo.PairSampler(_single_pairs(2))
    ev = dpo.PairEvalSet(_with_reference(_single_pairs(5)))
    assert len(ev) == 5 and ev[3:5].n_pairs == 2 and ev[3:5].to("cpu").n_tokens > 0


def test_filter_split_and_config():
    pairs = _full_pairs(10)
    kept, counts = dpo.filter_pairs(pairs, max_length=7)
    assert all(p.max_length <= 7 for p in kept) and counts["dropped_over_max_length"] == 10 - len(kept) > 0
    train, valid = dpo.split_pairs(pairs, 0.2, 100, seed=0)
    assert len(valid) == 2 and {p.id for p in train} | {p.id for p in valid} == {p.id for p in pairs}
    assert dpo.split_pairs(pairs, 0.2, 100, seed=0) == (train, valid)
    spec = dpo.DPOConfig(epochs=2, micro_batch_size=2, grad_accum=2).train_spec(10, "cpu")
    assert spec.max_steps == 5 and spec.warmup_steps == 0 and spec.precision == "fp32"
    with pytest.raises(Exception, match="extra"):
        dpo.DPOConfig(betta=0.1)


# -- training through the shared Trainer --------------------------------------------------

GOOD, BAD = list(range(10, 20)), list(range(40, 50))


def _separable_pairs(n, seed=0):
    """Chosen token from GOOD, rejected from BAD after a random prompt: learnable by a tiny model."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    singles = [TokenPair(f"s{i}", "pts", _ids(g, 4 + i % 6), [pick(GOOD)], [pick(BAD)]) for i in range(n)]
    fulls = [TokenPair(f"f{i}", "judge_overall", _ids(g, 3), [pick(GOOD), pick(GOOD)], [pick(BAD)])
             for i in range(n // 4)]
    return singles + fulls


def _config(**kw):
    base = dict(beta=0.5, lr=1e-2, max_length=128, max_steps=12, micro_batch_size=8, grad_accum=1, warmup_steps=1,
                valid_fraction=0.2, checkpoint_every=4, log_every=100)
    return dpo.DPOConfig(**{**base, **kw})


def test_training_raises_reward_accuracy_and_changes_params(tmp_path):
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    lines = []
    summary = dpo.train_dpo(model, _separable_pairs(60), _config(), tmp_path, log=lines.append)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert summary["steps"] == 12 and summary["pairs"]["valid"] == 15 and summary["reference"] == "computed"
    assert summary["valid_before"]["reward_accuracy"] == 0.0
    assert summary["valid_after"]["reward_accuracy"] >= 0.8
    assert summary["valid_after"]["logp_accuracy"] > summary["valid_before"]["logp_accuracy"]
    assert summary["valid_after"]["loss"] < math.log(2) - 0.1
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert train[-1]["reward_margin"] > train[0]["reward_margin"] and {"reward_accuracy", "chosen_reward",
                                                                        "rejected_reward"} <= set(train[-1])
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["val_metrics"]["pairs/reward_accuracy"] >= 0.8
    assert any("reference log-probs: computing" in line for line in lines)
    saved = json.loads((tmp_path / "dpo_config.json").read_text())
    assert saved["config"]["beta"] == 0.5 and saved["train_spec"]["max_steps"] == 12


def test_reference_computed_once_and_resume_reproduces_run(tmp_path, monkeypatch):
    pairs = _separable_pairs(24)
    calls = []
    real = dpo.precompute_reference_logps
    monkeypatch.setattr(dpo, "precompute_reference_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    full = dpo.train_dpo(_model(), pairs, _config(max_steps=6, micro_batch_size=4), tmp_path / "full",
                         log=lambda m: None)
    dpo.train_dpo(_model(), pairs, _config(max_steps=6, micro_batch_size=4), tmp_path / "part",
                  log=lambda m: None, stop_after=5)  # "crash" after step 5; checkpoint at step 4
    assert len(calls) == 2
    resumed = dpo.train_dpo(_model(), pairs, _config(max_steps=6, micro_batch_size=4), tmp_path / "part",
                            log=lambda m: None)
    assert len(calls) == 2 and resumed["reference"] == "cache"
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl") if r["kind"] == "train"]
              for d in (tmp_path / "full", tmp_path / "part")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
    assert resumed["epochs"] == pytest.approx(full["epochs"])


def test_reference_forward_count(tmp_path):
    """One reference pass over train + held-out pairs: ceil(n / ref_batch_size) batches, ≤ 2 forwards each."""
    model = _model()
    pairs = _single_pairs(20)
    calls = []
    hook = model.base_model.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    dpo.train_dpo(model, pairs, _config(max_steps=1, micro_batch_size=4, ref_batch_size=8, valid_fraction=0.0),
                  tmp_path, log=lambda m: None)
    hook.remove()
    no_grad = [c for c in calls if not c]
    assert len(no_grad) == math.ceil(20 / 8)  # single-token pairs: one forward per batch; no eval set


def test_train_dpo_checks_model_fit(tmp_path):
    with pytest.raises(ConfigError, match="max_length=4096 exceeds the model's context"):
        dpo.train_dpo(_model(), _single_pairs(4), _config(max_length=4096), tmp_path, log=lambda m: None)
    bad = [TokenPair("x", "pts", [1, 2], [VOCAB + 3], [4])]
    with pytest.raises(DataError, match="pair 'x': token id 67 is outside the model's vocabulary"):
        dpo.train_dpo(_model(), bad, _config(), tmp_path, log=lambda m: None)

