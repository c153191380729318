"""Server feature probing on scripted servers (the real llama.cpp probe is in test_llamacpp.py)."""

from phiforge.backends.base import SamplingParams
from phiforge.backends.http import HTTPBackend
from phiforge.backends.probe import _echo_alignment, probe_server
from phiforge.testing.http import ScriptedOpenAIServer


def test_probe_detects_n_support():
    with ScriptedOpenAIServer(honour_n=True) as good, ScriptedOpenAIServer(honour_n=False) as bad:
        assert probe_server(good.url, "m").n is True
        report = probe_server(bad.url, "m")
        assert report.n is False and "ignored" in report.notes["n"]


def test_auto_profile_probes_once_then_degrades_n():
    with ScriptedOpenAIServer(honour_n=False) as srv:
        be = HTTPBackend(srv.url, "m", profile="auto")
        res = be.sample(["x"], SamplingParams(n=3, max_tokens=2, seed=7))
        probes = len(srv.requests) - 3
        be.sample(["y"], SamplingParams(n=2, max_tokens=2, seed=7))
    assert be.probe_report is not None and be.profile.n is False
    assert len(res.completions[0]) == 3 and len({c.text for c in res.completions[0]}) == 3
    assert probes == 6 and len(srv.requests) == probes + 3 + 2  # probed once only


def test_echo_alignment_finds_the_offset():
    gen_tokens, gen_values = ["a", "b", "c"], [-1.0, -2.0, -3.0]
    aligned = {"tokens": ["p", "q", "a", "b", "c", "z"], "token_logprobs": [None, -5, -1.0, -2.0, -3.0, -0.1]}
    shifted = {"tokens": ["p", "q", "a", "b", "c", "z"], "token_logprobs": [None, -5, -9, -1.0, -2.0, -3.0]}
    assert _echo_alignment(gen_tokens, gen_values, aligned) == "aligned"
    assert _echo_alignment(gen_tokens, gen_values, shifted) == "shifted by +1 token"
    assert "re-tokenized" in _echo_alignment(["x"], [-1.0], aligned)
