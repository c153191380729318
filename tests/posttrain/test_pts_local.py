"""Pivotal Token Search end to end on a real (tiny, random) Phi-3-architecture model via ``LocalBackend``.

The oracle accepts a response containing an 'a' or an 'e'. With random weights the
model emits near-uniform tokens, so the token of T_full that first brings one of those
letters lifts p(success) to 1: a genuine pivot on real token ids.
"""

from collections import Counter

import pytest
import torch

from phiforge.backends.local import LocalBackend
from phiforge.model.presets import build_config, build_model
from phiforge.posttrain.pts import PTSConfig, PTSQuery, pairs_as_token_rows, pairs_as_trl_rows, search
from phiforge.tokenize import train_bpe
from phiforge.verify.oracle import Verdict

CORPUS = [
    "the cat sat on the mat and looked at the hat",
    "a quick brown fox jumps over the lazy dog",
    "two plus two is four and three plus five is eight",
] * 20


class ContainsOracle:
    """Correct when the response contains any character of the reference; records what it read."""

    def __init__(self):
        self.calls, self.texts = 0, []

    def check_many(self, responses, references):
        self.calls += 1
        self.texts += responses
        return [Verdict(any(ch in r for ch in ref), None, "x") for r, ref in zip(responses, references)]


class RecordingBackend(LocalBackend):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rollouts: dict[tuple, list] = {}

    def sample(self, prompts, params, progress=None):
        result = super().sample(prompts, params, progress)
        for prompt, group in zip(prompts, result.completions):
            self.rollouts.setdefault(tuple(prompt), []).extend(c.token_ids for c in group)
        return result


@pytest.fixture(scope="module")
def tok():
    return train_bpe(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def backend(tok):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model: threads only add overhead (restored below)
    cfg = build_config("tiny", dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=320))
    yield RecordingBackend(build_model(cfg, seed=0).eval(), tok, batch_size=64)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def searched(backend, tok):
    queries = [PTSQuery(f"q{i}", backend.chat_prompt([{"role": "user", "content": f"say {w}"}]), "ae")
               for i, w in enumerate(["cat", "dog", "fox", "hat"])]
    oracle = ContainsOracle()
    config = PTSConfig(max_tokens=8, round_size=8, max_rollouts=16, query_min_p=0.0, query_max_p=1.0, seed=0)
    return queries, oracle, search(backend, queries, oracle, config)


def test_runs_end_to_end_and_finds_pivots_on_real_token_ids(searched, tok):
    queries, oracle, result = searched
    assert result.stats.queries_searched == 4 and len(result.solutions) == 4
    assert result.pivots, "some T_full should bring an 'a' or 'e' (seeded)"
    for p in result.pivots:
        before = tok.decode(p.prefix_ids, skip_special_tokens=True)
        after = tok.decode(p.prefix_ids + [p.token_id], skip_special_tokens=True)
        if p.delta > 0 and p.p_after == 1.0:  # the letter arrived with this very token
            assert not any(ch in before for ch in "ae") and any(ch in after for ch in "ae")
    assert oracle.calls == result.stats.rounds and len(oracle.texts) == result.stats.rollouts


def test_pair_prompts_are_exactly_prompt_plus_prefix_ids(searched, tok):
    queries, _, result = searched
    prompts = {q.id: q.prompt_ids for q in queries}
    solutions = {(s.query_id, s.index): s.ids for s in result.solutions}
    rows = pairs_as_token_rows(result)
    assert len(rows) == sum(len(p.pairs) for p in result.pivots)
    for p, row in zip((p for p in result.pivots for _ in p.pairs), rows):
        assert p.prompt_ids == prompts[p.query_id]
        assert p.prefix_ids == solutions[(p.query_id, p.solution)][:p.position]
        assert row["prompt_ids"] == prompts[p.query_id] + p.prefix_ids
        assert len(row["chosen_ids"]) == len(row["rejected_ids"]) == 1
    text = pairs_as_trl_rows(result, lambda ids: tok.decode(ids, skip_special_tokens=False))
    assert all(r["prompt"].endswith(tok.decode(p.prefix_ids)) and "<|im_start|>assistant" in r["prompt"]
               for r, p in zip(text, (p for p in result.pivots for _ in p.pairs)))


def test_pair_tokens_are_first_tokens_of_rollouts_at_the_prefix(searched, backend):
    _, _, result = searched
    for p in result.pivots:
        firsts = Counter(ids[0] for ids in backend.rollouts[tuple(p.prompt_ids + p.prefix_ids)] if ids)
        for chosen, rejected in p.pairs:
            other = rejected if chosen == p.token_id else chosen
            assert firsts[other] > 0


def test_solutions_lose_their_stop_token_and_keep_raw_logprobs(searched, backend):
    _, _, result = searched
    for sol in result.solutions:
        assert sol.stop_id is None or sol.stop_id in backend.stop_ids
        assert not set(sol.ids) & backend.stop_ids or sol.stop_id is None
        assert len(sol.logprobs) == len(sol.ids) and all(lp <= 0 for lp in sol.logprobs)


def test_prefixes_are_never_re_encoded(backend, tok, monkeypatch):
    query = PTSQuery("q", backend.chat_prompt([{"role": "user", "content": "say cat"}]), "ae")

    def no_encoding(*args, **kwargs):
        raise AssertionError("PTS must not encode text")

    monkeypatch.setattr(type(tok), "__call__", no_encoding)
    monkeypatch.setattr(type(tok), "encode", no_encoding)
    result = search(backend, [query], ContainsOracle(),
                    PTSConfig(max_tokens=6, max_rollouts=8, query_min_p=0.0, query_max_p=1.0))
    assert result.stats.rounds > 0
