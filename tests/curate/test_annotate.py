"""Teacher annotation for the quality classifier: JSON parsing and re-ask, log-prob expected scores."""

from __future__ import annotations

import math
import re

import pytest
from pydantic import ValidationError

from phiforge.curate.annotate import (EDU_PREFIX, TOPIC_PREFIX, TOPICS, AnnotateConfig, Annotation, annotate,
                                      expected_score, truncate)
from phiforge.dataflow.step import StepContext
from phiforge.errors import ConfigError
from phiforge.synth.jsonask import REASK
from phiforge.testing.scripted import ScriptedBackend

REASK_MARK = REASK.split("{")[0].strip()


# --------------------------------------------------------------------------- json method


def _json_backend(replies: dict[str, str], default: str = '{"educational_value": 1, "topic": "other"}'):
    """Replies keyed by a word of the document; a re-asked conversation gets ``replies["reask"]``."""
    def reply(prompt: str, k: int) -> str:
        if REASK_MARK in prompt and "reask" in replies:
            return replies["reask"]
        return next((r for word, r in replies.items() if word in prompt), default)
    return ScriptedBackend(reply)


def test_json_valid_replies_parse_in_order():
    backend = _json_backend({"Bastille": 'Sure! ```json\n{"educational_value": 4, "topic": "History"}\n```',
                             "coupon": '{"educational_value": "0", "topic": "business"}'})
    ctx = StepContext("t")
    got = annotate(["The Bastille fell in 1789.", "Get a coupon now!"], backend,
                   AnnotateConfig(method="json"), ctx)
    assert [(a.edu, a.edu_label, a.topic, a.method) for a in got] == [(4.0, 4, "history", "json"),
                                                                     (0.0, 0, "business", "json")]
    assert "```json" in got[0].raw and got[0].ok
    assert ctx.counters["json_valid_first_try"] == 2 and ctx.counters["annotated"] == 2
    assert len(backend.prompts) == 2  # one batched call, no re-asks
    assert "curate_annotate_json@1" in ctx.templates


def test_json_invalid_is_reasked_then_accepted():
    backend = _json_backend({"Bastille": '{"educational_value": 9, "topic": "history"}',
                             "reask": '{"educational_value": 3.5, "topic": "history"}'})
    ctx = StepContext("t")
    [a] = annotate(["The Bastille fell in 1789."], backend, AnnotateConfig(method="json"), ctx)
    assert (a.edu, a.edu_label, a.topic) == (3.5, 4, "history")  # labels round half up
    assert ctx.counters["json_reasked"] == 1 and ctx.counters["json_valid_after_reask"] == 1
    assert "less than or equal to 5" in backend.prompts[1]  # the validation error went back to the model


def test_json_unknown_topic_fails_after_reasks():
    backend = _json_backend({"soup": '{"educational_value": 2, "topic": "cooking"}'})
    ctx = StepContext("t")
    [a] = annotate(["How to make soup."], backend, AnnotateConfig(method="json", max_reasks=1), ctx)
    assert not a.ok and a.edu is None and a.topic is None and "must be one of" in a.error
    assert a.raw == '{"educational_value": 2, "topic": "cooking"}'
    assert ctx.counters["json_failed"] == 1 and ctx.counters["annotation_failed"] == 1
    assert len(backend.prompts) == 2


def test_empty_documents_are_not_sent_and_long_ones_are_cut():
    backend = _json_backend({})
    got = annotate(["   ", "word " * 2000], backend, AnnotateConfig(method="json", max_chars=100))
    assert got[0].error == "empty document" and got[1].ok
    [prompt] = backend.prompts
    assert prompt.count("word") == 20  # 100 chars, cut at a word boundary
    assert truncate("abc def ghi", 9) == "abc def"


def test_annotation_round_trips_through_dict():
    a = Annotation(2.5, 2, "arts", method="logprob", topic_prob=0.4, edu_probs=(0.5, 0.5, 0, 0, 0, 0))
    assert Annotation.from_dict(a.to_dict()) == a


def test_config_checks_topics():
    with pytest.raises(ValidationError, match="other"):
        AnnotateConfig(topics=["math", "history"])
    with pytest.raises(ValidationError, match="distinct"):
        AnnotateConfig(topics=["math", "Math", "other"])


# --------------------------------------------------------------------------- logprob method


class _Tok:
    """Word pieces with their leading space (" history"), single digits, single symbols."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.pieces: list[str] = []

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self._id(p) for p in re.findall(r" ?[A-Za-z]+|\d| ?[^\sA-Za-z\d]|\s", text)]}

    def _id(self, piece: str) -> int:
        if piece not in self.ids:
            self.ids[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.ids[piece]

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids)


class FakeScorer:
    """``score`` answers from tables: ``edu[doc]`` = six digit log-probs, ``topic[doc]`` = {name: log-prob}.

    A multi-token topic's log-prob is split over its tokens (the annotator must sum them).
    """

    name = "fake"

    def __init__(self, edu: dict, topic: dict, default_topic: dict | None = None):
        self.tokenizer, self.edu, self.topic = _Tok(), edu, topic
        self.default_topic = default_topic or {}
        self.calls = 0

    def chat_prompt(self, messages, add_generation_prompt: bool = True):
        return self.tokenizer("<user>" + messages[-1]["content"] + "<assistant>")["input_ids"]

    def score(self, prompt_ids, continuation_ids):
        self.calls += 1
        out = []
        for p, c in zip(prompt_ids, continuation_ids):
            text, cand = self.tokenizer.decode(p), self.tokenizer.decode(c)
            doc = re.search(r'"""\n(.*?)\n"""', text, re.S).group(1)
            if text.endswith(EDU_PREFIX):
                out.append([self.edu.get(doc, [0.0] * 6)[int(cand)]])
            else:
                assert text.endswith(TOPIC_PREFIX) and cand.startswith(" ")
                value = self.topic.get(doc, self.default_topic).get(cand[1:], -20.0)
                out.append([value / len(c)] * len(c))
        return out


def test_expected_score_renormalises_over_candidates():
    edu, best, probs = expected_score([math.log(0.35), math.log(0.15)], [3, 4])
    assert edu == pytest.approx(3.3) and best == 0 and probs == pytest.approx([0.7, 0.3])
    assert expected_score([0.0] * 6, range(6))[:2] == (pytest.approx(2.5), 0)  # ties: the first


def test_logprob_expected_value_argmax_and_topic():
    low = -30.0
    edu = {"doc a": [low, low, math.log(0.35), math.log(0.15), low, low],  # -> 0.7 * 2 + 0.3 * 3
           "doc b": [math.log(0.5), low, low, low, low, math.log(0.5)]}
    topic = {"doc a": {"history": -1.0, "math": -3.0}, "doc b": {"travel": -0.5}}
    backend = FakeScorer(edu, topic)
    a, b = annotate(["doc a", "doc b"], backend, AnnotateConfig(calibrate_topic=False))
    assert a.edu == pytest.approx(2.3, abs=1e-4) and a.edu_label == 2 and a.method == "logprob"
    assert a.edu_probs == pytest.approx((0, 0, 0.7, 0.3, 0, 0), abs=1e-4)
    assert a.topic == "history" and a.topic_prob == pytest.approx(1 / (1 + math.exp(-2)), abs=1e-3)
    assert b.edu == pytest.approx(2.5) and b.edu_label == 0 and b.topic == "travel"
    assert backend.calls == 1  # one score call for the whole batch: digits and topics


def test_multi_token_topics_are_scored_in_full():
    topics = ["real estate", "history", "other"]  # " real estate" is two tokens here
    backend = FakeScorer({}, {"doc": {"real estate": -0.2, "history": -0.4}})
    [a] = annotate(["doc"], backend, AnnotateConfig(topics=topics, calibrate_topic=False))
    assert a.topic == "real estate"  # -0.2 split over two tokens, summed back
    with pytest.raises(ConfigError, match="prefix"):
        annotate(["doc"], backend, AnnotateConfig(topics=["real", "real estate", "other"]))


def test_calibration_removes_the_models_prior_and_batches_calls():
    prior = {"math": 0.0, "history": -3.0}  # the model says "math" to anything, content-free docs included
    docs = {f"doc {i}": {"math": 0.0, "history": -1.0} for i in range(5)}  # history is 2 nats above its prior
    backend = FakeScorer({}, docs, default_topic=prior)
    ctx = StepContext("t")
    raw = annotate(list(docs), backend, AnnotateConfig(calibrate_topic=False, batch_size=2))
    assert {a.topic for a in raw} == {"math"} and backend.calls == 3  # batches of 2, 2, 1
    got = annotate(list(docs), backend, AnnotateConfig(batch_size=2), ctx)
    assert {a.topic for a in got} == {"history"}
    assert ctx.counters["score_calls"] == 4  # 3 batches + 1 for the content-free documents
    assert {"curate_edu_score@1", "curate_topic@1"} <= set(ctx.templates)


class _SplitDigitTok(_Tok):
    """Digits as two tokens ("<d>", "3"): the logprob method cannot read a digit distribution."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        if text.isdigit():
            return {"input_ids": [self._id("<d>"), self._id(text)]}
        return super().__call__(text, add_special_tokens)


def test_logprob_needs_a_scoring_backend_with_single_token_digits():
    with pytest.raises(ConfigError, match="method = 'json'"):
        annotate(["x"], ScriptedBackend(lambda p, k: ""))
    backend = FakeScorer({}, {})
    backend.tokenizer = _SplitDigitTok()
    with pytest.raises(ConfigError, match="single tokens"):
        annotate(["x"], backend)


# --------------------------------------------------------------------------- the bundled teacher


DOCS = [
    "The French Revolution began in 1789; the Bastille fell on 14 July and the monarchy was abolished in 1792.",
    "Kyoto has more than 1,600 temples; visit Fushimi Inari and its thousands of red torii gates in spring.",
    "In Python, [x * x for x in range(10)] builds the squares of 0 to 9 in one expression.",
    "BUY NOW!!! 50% OFF all shoes this weekend only. Free shipping. Click here!",
]


def test_real_teacher_logprob_annotation(teacher):
    """Valid labels from the bundled 135M teacher (their quality is measured, not asserted: see quality.py)."""
    ctx = StepContext("t")
    got = annotate(DOCS, teacher, AnnotateConfig(batch_size=len(DOCS)), ctx)
    for a in got:
        assert a.ok and 0 <= a.edu <= 5 and a.edu_label in range(6) and a.topic in TOPICS
        assert sum(a.edu_probs) == pytest.approx(1, abs=1e-3) and 0 < a.topic_prob <= 1
    assert len({a.topic for a in got}) > 1  # uncalibrated, this teacher answers "math" for everything
    assert ctx.counters["score_calls"] == 2  # the batch + the content-free calibration
