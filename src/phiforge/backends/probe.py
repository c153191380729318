"""Find out what an OpenAI-compatible server really supports, by asking it.

Servers that claim OpenAI compatibility differ in exactly the features the recipe
leans on (measured with llama-cpp-python 0.3.36's server: token-id prompts fail,
``n`` is ignored, ``echo`` prompt log-probs are wrong: -8 to -11 nats for tokens the
model itself gives -0.2 to -1.8, at every offset; vLLM does all
of them). Trusting a name is fragile across versions, so ``profile = "auto"``
runs six tiny requests once per backend and builds the ``ServerProfile`` from
the answers:

* **token prompts**: ``/v1/completions`` with ``prompt`` as a list of ids → 2xx with a choice.
* **n**: ``n = 2`` at temperature 1 → two choices come back.
* **token ids in log-probs**: ``return_tokens_as_token_ids`` (vLLM) → tokens read ``token_id:<id>``.
* **prompt log-probs**: a greedy continuation ``G`` of a prompt ``P`` is generated
  with its log-probs; then ``P + G`` is sent with ``echo`` and the echoed
  log-probs of ``G``'s tokens must equal the generated ones (to 0.05 nats).
  Equal one position off means the echo is shifted; equal nowhere means it is
  wrong (llama.cpp 0.3.36). Either way prompt scoring is not trusted and
  ``score`` goes to a local scorer.

Every probe is a single attempt with a short timeout: a server that errors on a
feature does not support it. A server that answers nothing at all is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phiforge.errors import BackendError

PROBE_PROMPT = "The three primary colors are"
LOGPROB_TOLERANCE = 0.05  # nats; the same server scoring the same tokens twice


@dataclass
class ProbeReport:
    """The detected profile, and one line per feature saying what the server did."""

    token_prompts: bool = False
    n: bool = False
    token_ids_in_logprobs: bool = False
    prompt_logprobs: bool = False
    notes: dict[str, str] = field(default_factory=dict)

    def profile(self):
        from phiforge.backends.http import ServerProfile

        return ServerProfile(token_prompts=self.token_prompts, n=self.n,
                             token_ids_in_logprobs=self.token_ids_in_logprobs, prompt_logprobs=self.prompt_logprobs)


def probe_server(base_url: str, model: str, *, headers: dict | None = None, tokenizer=None,
                 timeout: float = 60.0) -> ProbeReport:
    """Probe ``base_url`` for the features in ``ServerProfile`` (six short requests)."""
    import httpx

    report = ProbeReport()
    with httpx.Client(base_url=base_url.rstrip("/"), headers=headers or {}, timeout=timeout) as client:
        ask = _Asker(client, model)
        base = ask({"prompt": PROBE_PROMPT, "max_tokens": 1, "temperature": 0.0})
        if not isinstance(base, dict):
            raise BackendError(f"{base_url}/v1/completions: the server does not answer a plain completion "
                               f"request ({base}); is it an OpenAI-compatible server serving {model!r}?")
        _probe_token_prompts(ask, tokenizer, report)
        _probe_n(ask, report)
        _probe_token_ids(ask, report)
        _probe_prompt_logprobs(ask, report)
    return report


class _Asker:
    """One POST to /v1/completions, no retries: returns the JSON body, or a string saying what failed."""

    def __init__(self, client, model: str):
        self.client, self.model = client, model

    def __call__(self, body: dict) -> dict | str:
        import httpx

        try:
            resp = self.client.post("/v1/completions", json={"model": self.model, "seed": 0, **body})
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"
        if resp.status_code >= 400:
            return f"HTTP {resp.status_code}: {resp.text[:160]!r}"
        try:
            data = resp.json()
            data["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            return f"unexpected body {resp.text[:160]!r}"
        return data


def _probe_token_prompts(ask: _Asker, tokenizer, report: ProbeReport) -> None:
    ids = list(tokenizer(PROBE_PROMPT, add_special_tokens=False)["input_ids"]) if tokenizer else [40, 1000, 318]
    got = ask({"prompt": ids, "max_tokens": 1, "temperature": 0.0})
    report.token_prompts = isinstance(got, dict)
    report.notes["token_prompts"] = "accepted" if report.token_prompts else f"rejected ({got})"


def _probe_n(ask: _Asker, report: ProbeReport) -> None:
    got = ask({"prompt": PROBE_PROMPT, "max_tokens": 1, "temperature": 1.0, "n": 2})
    count = len(got["choices"]) if isinstance(got, dict) else 0
    report.n = count == 2
    report.notes["n"] = "honoured" if report.n else (f"ignored ({count} choice for n=2)" if count else f"failed ({got})")


def _probe_token_ids(ask: _Asker, report: ProbeReport) -> None:
    got = ask({"prompt": PROBE_PROMPT, "max_tokens": 2, "temperature": 0.0, "logprobs": 1,
               "return_tokens_as_token_ids": True})
    tokens = _logprobs(got).get("tokens") or []
    report.token_ids_in_logprobs = bool(tokens) and all(str(t).startswith("token_id:") for t in tokens)
    report.notes["token_ids_in_logprobs"] = "yes" if report.token_ids_in_logprobs else "no (tokens come as text)"


def _probe_prompt_logprobs(ask: _Asker, report: ProbeReport) -> None:
    gen = ask({"prompt": PROBE_PROMPT, "max_tokens": 6, "temperature": 0.0, "logprobs": 1})
    lp = _logprobs(gen)
    tokens, values = lp.get("tokens") or [], lp.get("token_logprobs") or []
    if not tokens or len(tokens) != len(values):
        report.notes["prompt_logprobs"] = f"untested: no generated log-probs ({gen if isinstance(gen, str) else ''})"
        return
    echo = ask({"prompt": PROBE_PROMPT + gen["choices"][0]["text"], "max_tokens": 1, "temperature": 0.0,
                "logprobs": 1, "echo": True})
    verdict = _echo_alignment(tokens, values, _logprobs(echo))
    report.prompt_logprobs = verdict == "aligned"
    report.notes["prompt_logprobs"] = verdict if isinstance(echo, dict) else f"echo failed ({echo})"


def _echo_alignment(gen_tokens: list, gen_values: list, echo: dict) -> str:
    """Where the echoed log-probs of the generated tokens sit: ``aligned``, ``shifted by k``, or why unknown."""
    tokens, values = echo.get("tokens") or [], echo.get("token_logprobs") or []
    k = len(gen_tokens)
    starts = [j for j in range(len(tokens) - k + 1) if tokens[j:j + k] == gen_tokens]
    if not starts:
        return "not comparable: the echoed prompt re-tokenized differently"
    j = starts[-1]
    for shift in (0, 1, -1):
        window = values[j + shift:j + shift + k]
        if len(window) == k and None not in window and \
                all(abs(float(a) - float(b)) <= LOGPROB_TOLERANCE for a, b in zip(window, gen_values)):
            return "aligned" if shift == 0 else f"shifted by {shift:+d} token"
    return "wrong: echoed log-probs match the generated ones at no offset"


def _logprobs(body) -> dict:
    if not isinstance(body, dict):
        return {}
    return body["choices"][0].get("logprobs") or {}
