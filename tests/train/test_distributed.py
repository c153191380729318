"""Data parallelism on one CPU: 2 gloo ranks against 1 process (issue: scale-out, tested on one CPU).

One module-scoped launch of 2 ranks trains the same tiny model under several layouts;
the tests compare them with single-process runs of the same global batch:

(a) 2 ranks (FSDP2 and DDP-style) give the losses and weights of 1 rank;
(b) a checkpoint written by 2 ranks resumes on 1 and reproduces the uninterrupted run;
(c) micro-batch x accumulation x ranks equivalences hold (4x1x1 = 2x1x2 = 1x2x2).
"""

import json

import numpy as np
import pytest
import torch

from phiforge.model.presets import build_config, build_model
from phiforge.testing.dist import run_ranks
from phiforge.train.checkpoint import export_hf_model, list_checkpoints
from phiforge.train.distributed import ParallelConfig, current_env
from phiforge.train.mixture import MixtureSampler
from phiforge.train.packing import TokenSource
from phiforge.train.trainer import Trainer, TrainSpec, read_metrics

VOCAB, SEQ, STEPS = 64, 16, 6
GLOBAL = 4  # sequences per optimizer step in every layout


def _model(tied=False):
    cfg = build_config("tiny", {"vocab_size": VOCAB, "num_hidden_layers": 2, "hidden_size": 32,
                                "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                                "tie_word_embeddings": tied})
    return build_model(cfg, seed=0)


def _sampler():
    rng = np.random.default_rng(0)
    docs = [[1 + (int(k) + j) % (VOCAB - 1) for j in range(int(n))]
            for k, n in zip(rng.integers(0, VOCAB, 200), rng.integers(4, 30, 200))]
    env = current_env()
    return MixtureSampler({"s": TokenSource.from_token_lists("s", docs, 0)}, {"s": 1.0}, SEQ, seed=0,
                          rank=env.rank, world_size=env.world_size)


def train(out_dir, micro, accum, sharding="fsdp", checkpointing=False, stop_after=None, precision="fp32",
          tied=False):
    """Train (or resume) in ``out_dir``; export the final weights; return the logged train losses."""
    spec = TrainSpec(max_steps=STEPS, micro_batch_size=micro, grad_accum=accum, seq_len=SEQ, lr=1e-2,
                     warmup_steps=2, log_every=100, eval_every=0, checkpoint_every=3, precision=precision)
    model = _model(tied)
    trainer = Trainer(model, spec, _sampler(), out_dir, log=lambda m: None, stop_after=stop_after,
                      parallel=ParallelConfig(sharding=sharding, activation_checkpointing=checkpointing))
    trainer.fit()
    if stop_after is None:
        export_hf_model(trainer.model, None, out_dir / "model")
    return [r["loss"] for r in read_metrics(out_dir / "metrics.jsonl") if r["kind"] == "train"]


def _sigterm_on_rank1(root):
    """Rank 1 alone gets SIGTERM during step 3: both ranks must checkpoint step 3 and stop together."""
    import os
    import signal

    from phiforge.train.trainer import causal_lm_loss

    calls = []

    def objective(model, batch, autocast):
        calls.append(1)
        if current_env().rank == 1 and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return causal_lm_loss(model, batch, autocast)

    spec = TrainSpec(max_steps=STEPS, micro_batch_size=2, seq_len=SEQ, lr=1e-2, warmup_steps=2, log_every=100,
                     eval_every=0, checkpoint_every=0)
    trainer = Trainer(_model(), spec, _sampler(), root / "sigterm", log=lambda m: None, objective=objective)
    try:
        trainer.fit()
    except KeyboardInterrupt as e:
        return {"stopped_at": trainer.step, "message": str(e)}
    return {"stopped_at": None}


def _reference_pairs():
    from phiforge.posttrain.pairs import TokenPair

    rng = np.random.default_rng(1)
    return [TokenPair(id=f"p{i}", kind="t", prompt_ids=rng.integers(1, VOCAB, 3 + i % 5).tolist(),
                      chosen_ids=rng.integers(1, VOCAB, 1 + i % 3).tolist(),
                      rejected_ids=rng.integers(1, VOCAB, 1 + i % 2).tolist()) for i in range(11)]


def _reference_scores(sharding):
    """DPO reference log-probs of 11 pairs in batches of 2 (6 batches: uneven over 2 ranks with FSDP)."""
    from phiforge.posttrain.dpo import precompute_reference_logps
    from phiforge.train.distributed import parallelize

    model = parallelize(_model(), ParallelConfig(sharding=sharding), "fp32", "cpu")
    out = precompute_reference_logps(model, _reference_pairs(), batch_size=2)
    return [[p.ref_chosen_logp, p.ref_rejected_logp] for p in out]


def _two_rank_layouts(root):
    """Every layout the tests need, in one launch of 2 ranks (rank 0 returns the losses)."""
    return {"fsdp": train(root / "fsdp", micro=2, accum=1),
            "ddp": train(root / "ddp", micro=2, accum=1, sharding="ddp"),
            "fsdp_accum": train(root / "fsdp_accum", micro=1, accum=2),
            "fsdp_ckpt": train(root / "fsdp_ckpt", micro=2, accum=1, checkpointing=True),
            "bf16": train(root / "bf16", micro=2, accum=1, precision="bf16"),
            "crashed": train(root / "resume", micro=2, accum=1, stop_after=5),
            "tied": train(root / "tied", micro=2, accum=1, tied=True),
            "sigterm": _sigterm_on_rank1(root),
            "reference_fsdp": _reference_scores("fsdp"), "reference_ddp": _reference_scores("ddp")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    single = train(root / "single", micro=GLOBAL, accum=1)
    single_tied = train(root / "single_tied", micro=GLOBAL, accum=1, tied=True)
    two = run_ranks(_two_rank_layouts, 2, args=(root,))
    return root, {"untied": single, "tied": single_tied}, two


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model" / "model.safetensors")


def _assert_same_weights(a, b, atol=1e-5):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=1e-4), k


def test_two_ranks_match_one_rank_with_the_same_global_batch(runs):
    root, singles, two = runs
    single = singles["untied"]
    for layout in ("fsdp", "ddp"):
        assert two[layout] == pytest.approx(single, rel=1e-5, abs=1e-6), layout
        _assert_same_weights(root / "single", root / layout)
    # the losses really move: the comparison is not between constants
    assert single[-1] < single[0] - 0.3


def test_activation_checkpointing_changes_memory_not_math(runs):
    root, singles, two = runs
    single = singles["untied"]
    assert two["fsdp_ckpt"] == pytest.approx(single, rel=1e-5, abs=1e-6)
    _assert_same_weights(root / "single", root / "fsdp_ckpt")


def test_bf16_mixed_precision_trains_close_to_fp32(runs):
    root, singles, two = runs
    single = singles["untied"]
    assert two["bf16"] != single  # bf16 compute really ran
    assert two["bf16"] == pytest.approx(single, rel=0.03)
    assert _weights(root / "bf16")["lm_head.weight"].dtype == torch.float32  # fp32 master weights


def test_micro_batch_accumulation_rank_equivalences(runs, tmp_path):
    root, singles, two = runs
    single = singles["untied"]
    accum = train(tmp_path / "accum", micro=1, accum=GLOBAL)  # 1 x 4 x 1
    assert accum == pytest.approx(single, rel=1e-5, abs=1e-6)
    assert two["fsdp_accum"] == pytest.approx(single, rel=1e-5, abs=1e-6)  # 1 x 2 x 2
    _assert_same_weights(root / "single", root / "fsdp_accum")


def test_checkpoint_of_two_ranks_resumes_on_one(runs):
    root, singles, two = runs
    single = singles["untied"]
    folder = root / "resume"
    assert [p.name for p in list_checkpoints(folder / "checkpoints")] == ["step_000003"]
    state = json.loads((folder / "checkpoints" / "step_000003" / "state.json").read_text())
    assert state["sampler"]["world_size"] == 2
    resumed = train(folder, micro=2, accum=2)  # the same global batch on one rank
    assert resumed == pytest.approx(single, rel=1e-5, abs=1e-6)
    _assert_same_weights(root / "single", folder)


def test_sampler_of_another_rank_is_refused(tmp_path):
    sampler = _sampler()
    sampler.rank, sampler.world_size = 1, 2
    spec = TrainSpec(max_steps=1, micro_batch_size=1, seq_len=SEQ, lr=1e-3)
    with pytest.raises(Exception, match="rank 1 of 2, but this process is rank 0 of 1"):
        Trainer(_model(), spec, sampler, tmp_path, log=lambda m: None)


def test_tied_embeddings_train_replicated_with_the_same_result(runs):
    root, singles, two = runs
    assert two["tied"] == pytest.approx(singles["tied"], rel=1e-5, abs=1e-6)
    # Adam turns fp32 summation-order noise in near-zero gradients into updates of up to ~lr x 1e-3
    _assert_same_weights(root / "single_tied", root / "tied", atol=1e-4)


def test_a_signal_on_one_rank_checkpoints_all_ranks_at_the_same_step(runs):
    root, singles, two = runs
    assert two["sigterm"]["stopped_at"] == 3 and "rerun to resume" in two["sigterm"]["message"]
    assert [p.name for p in list_checkpoints(root / "sigterm" / "checkpoints")] == ["step_000003"]
    assert len(list((root / "sigterm" / "checkpoints" / "step_000003" / "dcp").glob("*.distcp"))) == 2


def test_dpo_reference_log_probs_split_over_ranks_match_one_process(runs):
    root, singles, two = runs
    single = _reference_scores("none")
    for layout in ("reference_fsdp", "reference_ddp"):
        assert np.allclose(two[layout], single, rtol=1e-5, atol=1e-5), layout
