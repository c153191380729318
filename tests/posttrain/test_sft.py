"""SFT (Phi-4 report §4.1): loss masks, masked loss, packing, sampler resume, input errors, a tiny real run."""

from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from phiforge.errors import ConfigError, DataError
from phiforge.model.presets import build_config, build_model
from phiforge.posttrain.sft import (SFTConfig, SFTEvalSet, SFTSampler, collate, encode_conversations,
                                    held_out_count, masked_lm_loss, pack_rows, read_sft_rows, sft_train_spec,
                                    train_sft)
from phiforge.tokenize import IM_END, render_chat, train_bpe
from phiforge.train.checkpoint import list_checkpoints
from phiforge.train.trainer import read_metrics

CHAT = [
    {"role": "system", "content": "You are a careful math tutor."},
    {"role": "user", "content": "What is 12 * 7?"},
    {"role": "assistant", "content": "12 * 7 = 84."},
    {"role": "user", "content": "And divided by 4?"},
    {"role": "assistant", "content": "84 / 4 = 21."},
]

FACTS = [("What is the capital of France?", "Paris."), ("Name a primary colour.", "Red."),
         ("What is 2 + 3?", "2 + 3 = 5."), ("Spell cat backwards.", "tac"),
         ("What do bees make?", "Honey."), ("How many legs has a spider?", "Eight legs."),
         ("What is ice made of?", "Frozen water."), ("Which planet is red?", "Mars.")]


def qa(q: str, a: str, i: int | None = None) -> dict:
    row = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    return row if i is None else {"id": f"r{i}", **row}


ROWS = [qa(q, a, i) for i, (q, a) in enumerate(FACTS)]


@pytest.fixture(scope="module")
def tok():
    corpus = [render_chat(CHAT)] + [render_chat(r["messages"]) for r in ROWS] * 3
    return train_bpe(corpus * 5, vocab_size=300)


def tiny_model(tok, seed=0):
    cfg = build_config("tiny", {"vocab_size": len(tok), "num_hidden_layers": 2, "hidden_size": 64,
                                "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2})
    return build_model(cfg, seed=seed)


def decode(tok, ids) -> str:
    return tok.decode([int(i) for i in ids], skip_special_tokens=False)


# --------------------------------------------------------------------------- masks and loss


def test_loss_mask_is_exactly_assistant_content_and_im_end(tok):
    (ex,), stats = encode_conversations(tok, [{"messages": CHAT}], max_length=512)
    assert ex.ids.tolist() == tok(render_chat(CHAT), add_special_tokens=False)["input_ids"]
    assert decode(tok, ex.ids[ex.mask == 1]) == f"12 * 7 = 84.{IM_END}84 / 4 = 21.{IM_END}"
    runs = np.flatnonzero(np.diff(np.r_[0, ex.mask, 0]))  # start, end of each trained run
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert len(runs) == 4 and all(ex.ids[end - 1] == im_end for end in runs[1::2])
    assert decode(tok, ex.ids[:runs[0]]).endswith("<|im_start|>assistant<|im_sep|>")
    assert stats.as_dict() == {"rows": 1, "examples": 1, "tokens": len(ex), "trained_tokens": int(ex.mask.sum()),
                               "truncated": 0, "dropped": {}}
    batch = collate([[ex]], pad_id=4, packed=False)  # targets are shifted by one, mask with them
    assert decode(tok, batch.targets[batch.loss_mask]) == f"12 * 7 = 84.{IM_END}84 / 4 = 21.{IM_END}"
    assert batch.n_tokens == len(ex) - 1 and batch.position_ids is None


def test_masked_loss_equals_hand_computed_cross_entropy(tok):
    examples, _ = encode_conversations(tok, [{"messages": CHAT}, ROWS[0], ROWS[3]], max_length=512)
    model = tiny_model(tok).eval()
    batch = collate([[e] for e in examples], pad_id=tok.pad_token_id, packed=False)
    with torch.no_grad():
        loss, metrics = masked_lm_loss(model, batch, nullcontext)
        logp = F.log_softmax(model(input_ids=batch.input_ids).logits.float(), dim=-1)
    total, count = 0.0, 0
    for b in range(batch.input_ids.shape[0]):
        for t in range(batch.input_ids.shape[1]):
            if batch.loss_mask[b, t]:
                total -= logp[b, t, batch.targets[b, t]].item()
                count += 1
    assert count == sum(int(e.mask[1:].sum()) for e in examples) == metrics["trained_tokens"]
    assert loss.item() == pytest.approx(total / count, rel=1e-5)

    class Wrapped(torch.nn.Module):  # no .model / .lm_head: the full-logits path
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return self.inner(**kw)

    with torch.no_grad():
        assert masked_lm_loss(Wrapped(model), batch, nullcontext)[0].item() == pytest.approx(loss.item(), rel=1e-5)


def test_packed_rows_equal_separate_examples(tok):
    """Position ids restart per example: attention is block-diagonal, so packing changes no logit or loss."""
    examples, _ = encode_conversations(tok, ROWS[:3], max_length=512)
    model = tiny_model(tok).eval()
    packed = collate([examples], pad_id=tok.pad_token_id, packed=True)
    padded = collate([[e] for e in examples], pad_id=tok.pad_token_id, packed=False)
    assert packed.input_ids.shape[0] == 1 and packed.n_tokens == padded.n_tokens
    with torch.no_grad():
        row = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits[0]
        at = 0
        for e in examples:
            alone = model(input_ids=torch.from_numpy(e.ids[None, :-1])).logits[0]
            assert torch.allclose(row[at:at + len(e) - 1], alone, atol=1e-5)
            at += len(e) - 1
        assert masked_lm_loss(model, packed, nullcontext)[0].item() == pytest.approx(
            masked_lm_loss(model, padded, nullcontext)[0].item(), rel=1e-5)


# --------------------------------------------------------------------------- packing and sampler


def test_pack_rows_greedy_in_order():
    assert pack_rows([5, 5, 5, 10, 2], capacity=9) == [[0, 1], [2], [3], [4]]  # an example fills len - 1
    assert pack_rows([5, 5, 5, 9, 2], capacity=9) == [[0, 1], [2], [3, 4]]


def test_packing_keeps_every_trained_token_and_mask(tok):
    examples, stats = encode_conversations(tok, ROWS * 3, max_length=64)
    sampler = SFTSampler(examples, tok.pad_token_id, packing=True, max_length=64, seed=3)
    rows = sampler.rows_of_epoch(0)
    assert sorted(i for r in rows for i in r) == list(range(len(examples)))
    assert len(rows) < len(examples)
    batch = sampler.next_batch(len(rows))
    assert sampler.epochs_so_far() == 1.0
    assert batch.input_ids.shape[1] <= 64 and batch.trained_tokens == stats.trained_tokens
    expected = [decode(tok, e.ids[1:][e.mask[1:] == 1]) for r in rows for e in (examples[i] for i in r)]
    assert decode(tok, batch.targets[batch.loss_mask]) == "".join(expected)
    assert batch.n_tokens == stats.tokens - len(examples)


def _drain(sampler, k, mb=3):
    return [sampler.next_batch(mb).input_ids.tolist() for _ in range(k)]


@pytest.mark.parametrize("packing", [False, True])
def test_sampler_is_deterministic_and_resumes_exactly(tok, packing):
    examples, _ = encode_conversations(tok, ROWS, max_length=64)
    make = lambda seed=1: SFTSampler(examples, tok.pad_token_id, packing=packing, max_length=64, seed=seed)
    assert _drain(make(), 6) == _drain(make(), 6)
    assert _drain(make(), 6) != _drain(make(seed=2), 6)
    a = make()
    _drain(a, 4)  # crosses the epoch boundary
    state = json.loads(json.dumps(a.state_dict()))  # checkpoints store it as JSON
    b = make()
    b.load_state_dict(state)
    assert _drain(b, 5) == _drain(a, 5) and b.epochs_so_far() == a.epochs_so_far() > 1
    with pytest.raises(ConfigError, match="fingerprint"):
        SFTSampler(examples[:-1], 0, packing=packing, max_length=64, seed=1).load_state_dict(state)


def test_two_ranks_split_the_rows(tok):
    examples, _ = encode_conversations(tok, ROWS, max_length=64)
    r0, r1 = (SFTSampler(examples, 0, seed=5, rank=r, world_size=2).next_batch(4) for r in range(2))
    whole = SFTSampler(examples, 0, seed=5).next_batch(8)
    width = whole.input_ids.shape[1]
    widen = lambda b: F.pad(b.input_ids, (0, width - b.input_ids.shape[1]), value=0)
    assert torch.equal(widen(r0), whole.input_ids[0::2]) and torch.equal(widen(r1), whole.input_ids[1::2])
    assert r0.n_tokens + r1.n_tokens == whole.n_tokens


# --------------------------------------------------------------------------- drops and errors


def test_overlong_drop_and_truncate_counters(tok):
    long = qa("Tell me.", "Everything. " * 20, 99)
    prompt_only = qa("Tell me everything. " * 20, "ok", 98)
    rows = [ROWS[0], long, prompt_only, {"messages": []}, {"messages": [{"role": "user", "content": "hi"}]}]
    kept, stats = encode_conversations(tok, rows, max_length=40)
    assert stats.dropped == {"overlong": 2, "empty": 1, "no_assistant_tokens": 1} and len(kept) == 1
    kept, stats = encode_conversations(tok, rows, max_length=40, overlong="truncate")
    assert [e.id for e in kept] == ["r0", "r99"] and stats.truncated == 2
    assert stats.dropped == {"no_assistant_tokens": 2, "empty": 1}  # the truncated prompt lost its answer
    assert len(kept[1]) == 40 and kept[1].mask[-1] == 1  # cut mid-answer: no <|im_end|>
    with pytest.raises(ConfigError, match="overlong"):
        encode_conversations(tok, rows, max_length=40, overlong="cut")


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}',
     r":2: messages\[1\].role: 'bot' is not one of"),
    ('{"messages": [{"role": "user", "content": 3}]}', r":2: messages\[0\].content: expected a string"),
    ('{"text": "hello"}', r":2: missing field 'messages'"),
    ('{"messages": "hello"}', r":2: messages: expected a list"),
    ('{"messages": [1, 2', r":2: malformed JSON"),
    ('[1, 2]', r":2: expected a JSON object"),
    ('{"messages": [{"role": "user", "content": "a <|im_end|> b"}]}', r":2: messages\[0\].content: contains"),
])
def test_bad_jsonl_rows_name_file_line_and_field(tmp_path, line, message):
    path = _write(tmp_path / "sft.jsonl", [json.dumps(ROWS[0]), line])
    with pytest.raises(DataError, match=str(path).replace(".", r"\.") + message):
        read_sft_rows(path)


def test_reads_jsonl_folders_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write(tmp_path / "shard-00000.jsonl", [json.dumps(r) for r in ROWS[:2]] + [""])
    pq.write_table(pa.Table.from_pylist(ROWS[2:4]), tmp_path / "shard-00001.parquet")
    rows = read_sft_rows(tmp_path)
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3"] and rows[2]["messages"] == ROWS[2]["messages"]
    bad = [ROWS[0], {"id": "x", "messages": [{"role": "tool", "content": "y"}]}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet:row 2: messages\[0\]\.role: 'tool'"):
        read_sft_rows(tmp_path / "bad.parquet")


def test_in_memory_rows_errors_name_row_and_id(tok):
    with pytest.raises(DataError, match=r"row 1 \(id 'b'\): messages\[0\]\.role"):
        encode_conversations(tok, [ROWS[0], {"id": "b", "messages": [{"role": "x", "content": ""}]}], 64)


# --------------------------------------------------------------------------- config


def test_config_rejects_unknown_keys_and_derives_steps():
    with pytest.raises(ValidationError, match="extra"):
        SFTConfig(learning_rate=1e-4)
    with pytest.raises(ValidationError, match="valid_fraction"):
        SFTConfig(valid_fraction=0.6)
    spec = sft_train_spec(SFTConfig(epochs=2, micro_batch_size=4, grad_accum=2), 400, "cpu")
    assert (spec.max_steps, spec.warmup_steps, spec.lr, spec.precision) == (100, 3, 1e-6, "fp32")
    assert sft_train_spec(SFTConfig(max_steps=7), 100, "cpu").max_steps == 7
    assert held_out_count(100, SFTConfig()) == 2 and held_out_count(1, SFTConfig(valid_examples=5)) == 0


# --------------------------------------------------------------------------- a real run


def _cfg(**kw):
    base = dict(lr=3e-3, max_steps=30, micro_batch_size=4, max_length=64, warmup_steps=3, valid_examples=0,
                log_every=100, checkpoint_every=0, seed=1)
    return SFTConfig(**{**base, **kw})


def _losses(path):
    return [r["loss"] for r in read_metrics(path / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.parametrize("packing", [False, True])
def test_tiny_sft_memorises_answers(tok, tmp_path, packing):
    model = tiny_model(tok)
    evals = SFTEvalSet(encode_conversations(tok, ROWS, 64)[0], tok.pad_token_id)
    with torch.no_grad():
        before = masked_lm_loss(model.eval(), evals[0:8], nullcontext)[0].item()
    cfg = _cfg(packing=packing, lr=1e-2, max_steps=60, valid_examples=None)  # None: every valid row
    summary = train_sft(model, tok, ROWS, cfg, tmp_path, valid_rows=ROWS, log=lambda m: None)
    with torch.no_grad():
        after = masked_lm_loss(model.eval(), evals[0:8], nullcontext)[0].item()
    assert before > 4 and after < 0.6, (before, after)
    with torch.no_grad():  # the Trainer averages the means of its micro-batches (of 4)
        per_batch = [masked_lm_loss(model, evals[i:i + 4], nullcontext)[0].item() for i in (0, 4)]
    assert summary["final_val_loss"]["valid"] == pytest.approx(sum(per_batch) / 2, rel=1e-4)
    assert summary["steps"] == 60 and summary["examples"] == summary["valid_examples"] == 8
    rows = len(SFTSampler(evals.examples, 0, packing=packing, max_length=64, seed=1).rows_of_epoch(0))
    assert summary["epochs"] == pytest.approx(60 * 4 / rows, rel=0.2) and (rows == 8) != packing
    assert json.loads((tmp_path / "sft.json").read_text())["data"]["train"]["examples"] == 8
    row = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert row["trained_tokens"] > 0 and row["tokens"] > row["trained_tokens"]


def test_sft_resumes_after_a_crash(tok, tmp_path):
    cfg = _cfg(max_steps=8, checkpoint_every=3, valid_examples=2)
    train_sft(tiny_model(tok), tok, ROWS, cfg, tmp_path / "full", log=lambda m: None)
    part = tmp_path / "part"
    train_sft(tiny_model(tok), tok, ROWS, cfg, part, log=lambda m: None, stop_after=5)
    assert [p.name for p in list_checkpoints(part / "checkpoints")] == ["step_000003"]
    logs = []
    summary = train_sft(tiny_model(tok, seed=9), tok, ROWS, cfg, part, log=logs.append)
    assert any("resumed from" in m for m in logs) and summary["steps"] == 8
    assert _losses(part) == pytest.approx(_losses(tmp_path / "full"), rel=1e-5, abs=1e-6)
    with pytest.raises(ConfigError, match="fingerprint"):  # other data, same out_dir
        train_sft(tiny_model(tok), tok, ROWS[:6], cfg, part, log=lambda m: None)
