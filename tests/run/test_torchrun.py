"""``torchrun --nproc_per_node 2 -m phiforge run``: the real launcher, 2 gloo ranks on the CPU.

Rank 0 runs every stage; both ranks train (pretrain, midtrain, SFT, DPO) with FSDP2
and activation checkpointing; rank 1 writes nothing but its checkpoint shards.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from phiforge.testing.dist import free_port
from phiforge.train.trainer import read_metrics

ROOT = Path(__file__).resolve().parents[2]
SFT = ["data.tinymath.sft_examples=48", "sft.enabled=true", "sft.max_steps=3", "sft.micro_batch_size=2",
       "sft.global_batch=4", "sft.valid_examples=4", "sft.checkpoint_every=2", "eval.enabled=false"]


def _torchrun(args, env_extra=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "phiforge", "run", str(ROOT / "recipes" / "tiny.toml"), "run.device=cpu",
           "resources.activation_checkpointing=true", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _pairs(run_dir: Path, path: Path) -> Path:
    from phiforge.tokenize.stage import load_run_tokenizer

    tok = load_run_tokenizer(run_dir / "tokenizer")
    rows = []
    for i in range(12):
        ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        rows.append({"id": f"p{i}", "kind": "test", "prompt_ids": ids(f"Sam has {i} apples. Answer:"),
                     "chosen_ids": ids(f" {i}")[:1], "rejected_ids": ids(f" {i + 1}")[:1]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_torchrun_two_ranks_train_every_training_stage(fast_overrides, tmp_path):
    base = fast_overrides + SFT
    log = _torchrun(base)
    run_dir = tmp_path / "runs" / "t"
    assert "torchrun: 2 ranks" in log and log.count("[pretrain] start") == 1  # rank 1 is silent
    assert log.count("phiforge: run finished") == 1
    for stage in ("pretrain", "midtrain", "sft"):
        stats = json.loads((run_dir / stage / "stats.json").read_text())
        assert stats["steps"] >= 3, stage
        rows = [r for r in read_metrics(run_dir / stage / "metrics.jsonl") if r["kind"] == "train"]
        assert [r["step"] for r in rows] == list(range(1, stats["steps"] + 1))  # one writer: no duplicate rows
    pre = json.loads((run_dir / "pretrain" / "stats.json").read_text())
    assert pre["ranks"] == 2 and pre["sharding"] == "fsdp"
    assert pre["tokens"] == 6 * 4 * 2 * 64  # steps x micro x ranks x seq_len: both ranks' data counted
    sft = json.loads((run_dir / "sft" / "stats.json").read_text())
    assert sft["ranks"] == 2 and sft["epochs"] == pytest.approx(3 * 4 / sft["examples"], rel=0.01)
    ckpt = run_dir / "sft" / "checkpoints" / "step_000002" / "dcp"
    assert len(list(ckpt.glob("*.distcp"))) == 2  # each rank wrote its shards

    # DPO round 1 on a pair file, on 2 ranks, resuming nothing: the stage runs after the others.
    pairs = _pairs(run_dir, tmp_path / "pairs.jsonl")
    _torchrun(base + ["dpo.enabled=true", f"dpo.pairs=[\"{pairs}\"]", "dpo.max_steps=2", "dpo.micro_batch_size=2",
                      "dpo.global_batch=4", "dpo.valid_fraction=0.2"])
    dpo = json.loads((run_dir / "dpo" / "stats.json").read_text())
    assert dpo["steps"] == 2 and dpo["ranks"] == 2 and dpo["pairs"]["train"] + dpo["pairs"]["valid"] == 12
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "dpo" / "model")
    assert model.config.model_type == "phi3"
