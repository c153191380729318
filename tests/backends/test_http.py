"""HTTP backend against real local servers: retries, faults, cache, degraded paths."""

import pytest

from phiforge.backends.base import SamplingParams
from phiforge.backends.http import HTTPBackend, ServerProfile
from phiforge.errors import BackendError, ConfigError
from phiforge.testing.http import FaultProxy, ScriptedOpenAIServer

FAST = dict(backoff_base=0.01, backoff_max=0.05, timeout=2.0)


def test_completions_and_chat_roundtrip():
    with ScriptedOpenAIServer() as srv:
        be = HTTPBackend(srv.url, "m", **FAST)
        res = be.sample(["hello", [{"role": "user", "content": "hi"}]], SamplingParams(n=2, max_tokens=4, seed=1))
        assert [len(c) for c in res.completions] == [2, 2]
        assert res.completions[0][0].text == srv.answer("hello", 1, 0)
        assert res.completions[1][1].text == srv.answer([{"role": "user", "content": "hi"}], 1, 1)
        assert res.completions[0][0].logprobs == [-0.5] and res.completions[0][0].finish_reason == "length"
        assert srv.requests[0]["n"] == 2 and srv.requests[0]["model"] == "m"
        assert res.usage.calls == 2 and res.usage.completion_tokens == 4 and be.usage.calls == 2


def test_retries_through_every_fault_kind_then_succeeds():
    with ScriptedOpenAIServer() as srv, FaultProxy(srv.url, ["429", "500", "truncate", "drop", "hang"],
                                                   hang_seconds=3.0) as proxy:
        be = HTTPBackend(proxy.url, "m", max_retries=6, backoff_base=0.01, backoff_max=0.05, timeout=1.0)
        res = be.sample(["q"], SamplingParams(max_tokens=4, seed=0))
        assert res.completions[0][0].text == srv.answer("q", 0, 0)
        assert proxy.log[:6] == ["429", "500", "truncate", "drop", "hang", None]


def test_permanent_fault_names_endpoint_and_last_response_and_keeps_done_work(tmp_path):
    with ScriptedOpenAIServer() as srv:
        # First request passes, everything after fails with 500.
        with FaultProxy(srv.url, lambda i: None if i == 0 else "500") as proxy:
            be = HTTPBackend(proxy.url, "m", max_retries=2, cache_path=tmp_path / "c.sqlite", concurrency=1, **{
                k: v for k, v in FAST.items() if k != "timeout"})
            with pytest.raises(BackendError) as e:
                be.sample(["a", "b"], SamplingParams(max_tokens=4, seed=0))
            msg = str(e.value)
            assert proxy.url in msg and "/v1/completions" in msg and "after 3 attempts" in msg
            assert "HTTP 500" in msg and "injected 500" in msg and "1/2 requests succeeded" in msg
        # The finished request is cached: a rerun against a healthy server only asks for the missing one.
        n_before = len(srv.requests)
        be2 = HTTPBackend(srv.url, "m", cache_path=tmp_path / "c.sqlite", **FAST)
        res = be2.sample(["a", "b"], SamplingParams(max_tokens=4, seed=0))
        assert len(srv.requests) - n_before == 1 and res.usage.cached_calls == 1
        assert [c[0].text for c in res.completions] == [srv.answer("a", 0, 0), srv.answer("b", 0, 0)]


def test_non_retryable_client_error_fails_fast():
    with ScriptedOpenAIServer() as srv:
        be = HTTPBackend(srv.url + "/wrong-prefix", "m", max_retries=5, **FAST)
        with pytest.raises(BackendError, match=r"HTTP 404 \(not retried\).*no route"):
            be.sample(["a"], SamplingParams(max_tokens=2))
        assert len(srv.requests) == 0


def test_cached_rerun_makes_zero_calls(tmp_path):
    with ScriptedOpenAIServer() as srv:
        params = SamplingParams(n=3, max_tokens=4, seed=7)
        first = HTTPBackend(srv.url, "m", cache_path=tmp_path / "c.sqlite", **FAST).sample(["x", "y"], params)
        calls = len(srv.requests)
        second = HTTPBackend(srv.url, "m", cache_path=tmp_path / "c.sqlite", **FAST).sample(["x", "y"], params)
        assert len(srv.requests) == calls
        assert second.usage.calls == 0 and second.usage.cached_calls == 2
        assert [[c.text for c in cs] for cs in first.completions] == [[c.text for c in cs] for cs in second.completions]


def test_n_degrades_to_repeated_seeded_requests():
    with ScriptedOpenAIServer(honour_n=False) as srv:
        be = HTTPBackend(srv.url, "m", profile="llama.cpp", **FAST)
        res = be.sample(["p"], SamplingParams(n=3, max_tokens=4, seed=10))
        assert len(res.completions[0]) == 3 and len(srv.requests) == 3
        assert sorted(r["seed"] for r in srv.requests) == [10, 11, 12] and all(r["n"] == 1 for r in srv.requests)
        assert len({c.text for c in res.completions[0]}) == 3


def test_token_prompts_fast_path_and_degraded_round_trip():
    from phiforge.tokenize import train_bpe

    tok = train_bpe(["the cat sat on the mat"] * 30, vocab_size=280)
    ids = tok("the cat sat", add_special_tokens=False)["input_ids"]
    with ScriptedOpenAIServer() as srv:
        HTTPBackend(srv.url, "m", profile="vllm", **FAST).sample([ids], SamplingParams(max_tokens=2))
        assert srv.requests[-1]["prompt"] == ids and srv.requests[-1]["return_tokens_as_token_ids"] is True
        HTTPBackend(srv.url, "m", profile="llama.cpp", tokenizer=tok, **FAST).sample([ids], SamplingParams(max_tokens=2))
        assert srv.requests[-1]["prompt"] == "the cat sat"
        split = tok("the", add_special_tokens=False)["input_ids"]
        odd = [i for t in "the" for i in tok(t, add_special_tokens=False)["input_ids"]]  # non-canonical split
        assert odd != split
        with pytest.raises(BackendError, match="round trip"):
            HTTPBackend(srv.url, "m", profile="llama.cpp", tokenizer=tok, **FAST).sample([odd], SamplingParams())
        with pytest.raises(BackendError, match="tokenizer"):
            HTTPBackend(srv.url, "m", profile="llama.cpp", **FAST).sample([ids], SamplingParams())


def test_concurrency_limit_is_respected():
    with ScriptedOpenAIServer(delay=0.05) as srv:
        HTTPBackend(srv.url, "m", concurrency=3, **FAST).sample([f"p{i}" for i in range(12)], SamplingParams())
        assert srv.peak_in_flight <= 3 and len(srv.requests) == 12


def test_api_key_only_from_environment(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="MY_KEY"):
        HTTPBackend("http://127.0.0.1:1", "m", api_key_env="MY_KEY")
    monkeypatch.setenv("MY_KEY", "sekrit")
    with ScriptedOpenAIServer() as srv:
        HTTPBackend(srv.url, "m", api_key_env="MY_KEY", cache_path=tmp_path / "c.sqlite", **FAST).sample(
            ["a"], SamplingParams())
        assert srv.headers[0].get("Authorization") == "Bearer sekrit"
    assert b"sekrit" not in (tmp_path / "c.sqlite").read_bytes()


def test_score_refuses_untrustworthy_server_and_delegates_to_scorer():
    class Scorer:
        def score(self, p, c):
            return [[-1.0] * len(x) for x in c]

    with pytest.raises(BackendError, match="not trustworthy"):
        HTTPBackend("http://127.0.0.1:1", "m", profile="llama.cpp").score([[1]], [[2, 3]])
    be = HTTPBackend("http://127.0.0.1:1", "m", profile="llama.cpp", scorer=Scorer())
    assert be.score([[1]], [[2, 3]]) == [[-1.0, -1.0]]


def test_unknown_profile():
    with pytest.raises(ConfigError, match="llama.cpp"):
        HTTPBackend("http://x", "m", profile="nope")
    assert ServerProfile().token_prompts


def test_sample_works_inside_a_running_event_loop_and_from_threads():
    """Jupyter / async servers call from inside a loop; worker threads call concurrently."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ScriptedOpenAIServer() as srv:
        be = HTTPBackend(srv.url, "m", **FAST)

        async def inside():
            return be.sample(["q"], SamplingParams(max_tokens=2, seed=0)).completions[0][0].text

        assert asyncio.run(inside()) == srv.answer("q", 0, 0)
        with ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(lambda i: be.sample([f"t{i}"], SamplingParams(max_tokens=2, seed=0))
                                  .completions[0][0].text, range(8)))
        assert texts == [srv.answer(f"t{i}", 0, 0) for i in range(8)]
        be.close()
        be.close()  # idempotent
        assert be.sample(["again"], SamplingParams(max_tokens=2, seed=0)).completions[0][0].text  # reopens
