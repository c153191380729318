"""Cross-check against TRL's DPOTrainer: same loss, rewards and gradients on the same token ids.

TRL 1.16 has no standalone loss function: ``DPOTrainer._compute_loss`` computes the
policy log-probs (through its fused LM head), the sigmoid loss and the reward
metrics in one method. We run that method on a stand-in ``self`` holding only the
attributes it reads, with TRL's own ``DataCollatorForPreference`` building the
batch (prompt+chosen and prompt+rejected rows) and precomputed reference log-probs.
Single-token pairs go through TRL's full-sequence path, so this also checks that
our shared forward equals it.
"""

import copy
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer  # noqa: E402
from trl.trainer.utils import add_fused_lm_head  # noqa: E402

from phiforge.model.presets import build_config, build_model  # noqa: E402
from phiforge.posttrain import dpo  # noqa: E402
from phiforge.posttrain.pairs import TokenPair  # noqa: E402

VOCAB, BETA = 64, 0.2


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


def _pairs():
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(5, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    singles = [TokenPair(f"s{i}", "pts", ids(3 + i), ids(1), ids(1)) for i in range(3)]
    fulls = [TokenPair(f"f{i}", "judge_overall", ids(2 + i), ids(1 + 2 * i), ids(3 - i)) for i in range(3)]
    return [singles[0], fulls[0], singles[1], fulls[1], fulls[2], singles[2]]


def _trl_self(model):
    """The attributes ``DPOTrainer._compute_loss`` reads, for standard sigmoid DPO with precomputed references."""
    identity = lambda x: x  # noqa: E731
    return SimpleNamespace(
        model=model, accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=identity,
                                                 gather=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=BETA, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)


def test_loss_rewards_and_grads_match_trl():
    ref_model = _model(seed=5)
    pairs = dpo.precompute_reference_logps(ref_model, _pairs(), batch_size=4)

    ours = _model()
    loss, metrics = dpo.dpo_objective(BETA)(ours, dpo.collate_pairs(pairs), dpo._no_autocast)
    loss.backward()

    theirs = copy.deepcopy(_model())
    add_fused_lm_head(theirs, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    rows = [{"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids,
             "ref_chosen_logps": p.ref_chosen_logp, "ref_rejected_logps": p.ref_rejected_logp} for p in pairs]
    inputs = DataCollatorForPreference(pad_token_id=0)(rows)
    fake = _trl_self(theirs)
    trl_loss = DPOTrainer._compute_loss(fake, theirs, inputs, return_outputs=False)
    trl_loss.backward()

    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    logged = fake._metrics["train"]
    for ours_key, trl_key in (("reward_accuracy", "rewards/accuracies"), ("reward_margin", "rewards/margins"),
                              ("chosen_reward", "rewards/chosen"), ("rejected_reward", "rewards/rejected")):
        assert metrics[ours_key] == pytest.approx(logged[trl_key][0], rel=1e-4, abs=1e-6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_reference_logps_match_trl():
    """Our precompute equals TRL's ``compute_ref_log_probs`` on the same batch."""
    model = _model(seed=3)
    pairs = dpo.precompute_reference_logps(model, _pairs(), batch_size=4)
    trl_model = copy.deepcopy(model)
    add_fused_lm_head(trl_model)
    rows = [{"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids} for p in pairs]
    accelerator = SimpleNamespace(device=torch.device("cpu"), autocast=lambda: torch.autocast("cpu", enabled=False))
    fake = SimpleNamespace(accelerator=accelerator, ref_model=trl_model, model=trl_model, ld_alpha=None,
                           args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    inputs = DataCollatorForPreference(pad_token_id=0)(rows)
    chosen, rejected = DPOTrainer.compute_ref_log_probs(fake, trl_model, inputs)
    assert torch.allclose(chosen, torch.tensor([p.ref_chosen_logp for p in pairs]), atol=1e-5)
    assert torch.allclose(rejected, torch.tensor([p.ref_rejected_logp for p in pairs]), atol=1e-5)
