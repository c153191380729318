"""Token-pair files and text→token conversion (pairs.py)."""

import json

import pytest

from phiforge.errors import DataError
from phiforge.posttrain.pairs import (
    TokenPair,
    read_token_pairs,
    text_pairs_to_token_pairs,
    to_trl_rows,
    write_token_pairs,
)
from phiforge.tokenize import IM_END, render_chat, render_conversation, train_bpe

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tok():
    corpus = [render_chat(MESSAGES), "The capital of France is Paris. I do not know the answer to that question."] * 20
    return train_bpe(corpus, vocab_size=320)


def _row(**kw):
    return {"id": "p1", "kind": "pts", "prompt_ids": [1, 2, 3], "chosen_ids": [4], "rejected_ids": [5], **kw}


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_round_trip_keeps_metadata_and_reference(tmp_path):
    pairs = [TokenPair("a", "pts", [1, 2], [3], [4], metadata={"p_gap": 0.3}),
             TokenPair("b", "judge_accuracy", [1], [5, 6, 2], [7, 2], ref_chosen_logp=-1.5, ref_rejected_logp=-2.0)]
    write_token_pairs(tmp_path / "p.jsonl", pairs)
    back = read_token_pairs(tmp_path / "p.jsonl", vocab_size=8)
    assert back == pairs
    assert back[0].single_token and not back[1].single_token and back[1].has_reference


@pytest.mark.parametrize("row, needle", [
    (_row(chosen_ids=[4, "x"]), "field 'chosen_ids'[1]: token ids must be integers"),
    (_row(chosen_ids=[4, 1.0]), "field 'chosen_ids'[1]: token ids must be integers"),
    (_row(rejected_ids=[True]), "field 'rejected_ids'[0]: token ids must be integers"),
    (_row(chosen_ids=[]), "field 'chosen_ids': is empty"),
    (_row(prompt_ids="1 2 3"), "field 'prompt_ids': expected a list"),
    ({k: v for k, v in _row().items() if k != "rejected_ids"}, "missing field 'rejected_ids'"),
    (_row(prompt_ids=[1, 99]), "field 'prompt_ids'[1]: token id 99 is outside the vocabulary [0, 50)"),
    (_row(prompt_ids=[-1]), "token id -1 is outside"),
    (_row(id=""), "field 'id' must be a non-empty string"),
    (_row(ref_chosen_logp="x"), "field 'ref_chosen_logp': a reference log-prob"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, needle):
    path = _write(tmp_path / "pairs.jsonl", [_row(id="ok"), "", row])
    with pytest.raises(DataError) as e:
        read_token_pairs(path, vocab_size=50)
    assert f"{path}:3" in str(e.value)
    assert needle in str(e.value)


def test_bad_json_and_duplicate_ids(tmp_path):
    with pytest.raises(DataError, match=r"pairs.jsonl:2: malformed JSON"):
        read_token_pairs(_write(tmp_path / "pairs.jsonl", [_row(), "{nope"]))
    with pytest.raises(DataError, match=r"pairs.jsonl:2: id 'p1' already used on line 1"):
        read_token_pairs(_write(tmp_path / "pairs.jsonl", [_row(), _row()]))


def _text_row(**kw):
    return {"id": "t1", "kind": "judge_accuracy", "messages": MESSAGES, "chosen": "The capital of France is Paris.",
            "rejected": "I do not know.", "max_response_tokens": None, **kw}


def test_text_pairs_full_responses_end_with_im_end(tok):
    pairs, counts = text_pairs_to_token_pairs(tok, [_text_row(judge="gpt-4o")])
    (p,) = pairs
    end = tok.convert_tokens_to_ids(IM_END)
    assert p.prompt_ids == render_conversation(tok, MESSAGES, add_generation_prompt=True)[0]
    assert p.chosen_ids == tok("The capital of France is Paris.", add_special_tokens=False)["input_ids"] + [end]
    assert p.rejected_ids[-1] == end
    assert tok.decode(p.prompt_ids + p.chosen_ids) == render_chat(
        [*MESSAGES, {"role": "assistant", "content": "The capital of France is Paris."}])
    assert p.metadata == {"judge": "gpt-4o"} and counts == {"kept": 1}


def test_text_pairs_first_tokens_rule_truncates_without_end_token(tok):
    row = _text_row(kind="refusal", chosen="I do not know the answer to that question.",
                    rejected="The capital of France is Paris.", max_response_tokens=5)
    (p,), _ = text_pairs_to_token_pairs(tok, [row])
    full = tok(row["chosen"], add_special_tokens=False)["input_ids"]
    assert len(full) > 5 and p.chosen_ids == full[:5]
    assert tok.convert_tokens_to_ids(IM_END) not in p.chosen_ids + p.rejected_ids
    assert len(p.rejected_ids) == 5 and p.metadata["max_response_tokens"] == 5


def test_text_pairs_drop_identical_and_empty(tok):
    same_start = _text_row(id="t2", chosen="I do not know the answer.", rejected="I do not know the answer to that.",
                           max_response_tokens=3)
    rows = [_text_row(), _text_row(id="t3", chosen="Paris.", rejected="Paris."), same_start,
            _text_row(id="t4", chosen="", rejected="Paris", max_response_tokens=5)]
    pairs, counts = text_pairs_to_token_pairs(tok, rows)
    assert [p.id for p in pairs] == ["t1"]
    assert counts == {"kept": 1, "dropped_identical": 2, "dropped_empty_response": 1}


def test_text_pairs_bad_rows(tok):
    with pytest.raises(DataError, match="text pairs row 2: missing field 'rejected'"):
        text_pairs_to_token_pairs(tok, [_text_row(), {k: v for k, v in _text_row().items() if k != "rejected"}])
    with pytest.raises(DataError, match="row 1.*max_response_tokens"):
        text_pairs_to_token_pairs(tok, [_text_row(max_response_tokens=0)])
    with pytest.raises(DataError, match=r"row 1 \(id 't1'\): messages\[0\].role"):
        text_pairs_to_token_pairs(tok, [_text_row(messages=[{"role": "bot", "content": "x"}])])


def test_to_trl_rows_decodes_ids(tok):
    (p,), _ = text_pairs_to_token_pairs(tok, [_text_row()])
    (row,) = to_trl_rows([p], tok)
    assert row["prompt"] == render_chat(MESSAGES, add_generation_prompt=True)
    assert row["chosen"] == "The capital of France is Paris." + IM_END
    assert row["rejected"] == "I do not know." + IM_END
