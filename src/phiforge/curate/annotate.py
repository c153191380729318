"""LLM annotation of web documents: an educational-value score (0-5) and a topic label per document.

Why: the Phi-4 report keeps a small high-quality fraction of web dumps with "small
non-LLM classifiers trained on ~10^6 LLM-generated annotations", and amplifies
non-STEM content with topic labels "also distilled from an LLM annotator"
(report §2.3; ``docs/phi4-recipe.md`` §4). This module makes those annotations on a
sample; ``phiforge.curate.quality`` trains the classifier on them and applies it at scale.

Two methods (``AnnotateConfig.method``):

* ``"json"``, for strong teachers (an endpoint): one prompt with an additive 0-5
  rubric and the topic list, the reply is ``{"educational_value": N, "topic": "..."}``,
  validated and re-asked with its error through :func:`phiforge.synth.jsonask.ask_json`.
* ``"logprob"`` (default; the bundled 135M teacher writes valid JSON almost never),
  G-Eval style as in ``posttrain.judge`` (``scoring = "logprob"``): two short prompts
  per document, the teacher's reply forced to ``"Educational value: "`` and to
  ``"Topic:"``, and the labels read off the exact next-token log-probs of the
  candidates (``backend.score``): the six digits "0".."5" give a distribution whose
  mean is ``edu`` and whose argmax is ``edu_label``; each topic name (with its leading
  space, as the model would write it) is scored in full, so the topic distribution is
  exact even for multi-token names (single-token names, the usual case, cost one
  forward per document for all of them). One ``score`` call per batch of documents.

Our choices (all UNCONFIRMED: the paper gives no annotator prompt, scale or topic list):

* **Scale**: 0-5, additive, written in our words after FineWeb-Edu's annotator
  (Penedo et al. 2024), a public recipe of the same kind; keep-threshold 3 downstream.
* **Topics** (:data:`TOPICS`): five STEM topics (math, science, technology,
  programming, medicine) and seven non-STEM ones named after the report's examples
  (history, arts, travel, culture, entertainment) plus sports and business, and
  "other". ``STEM_TOPICS`` is what the non-STEM amplifier treats as STEM.
* **Truncation**: the first ``max_chars`` characters (cut at a word boundary), then
  at most ``max_tokens`` tokens when the backend has a tokenizer: scoring cost is
  linear in document length and the start of a page says most about it.
* **Calibration** ("contextual calibration", Zhao et al. 2021, "Calibrate Before
  Use"): the candidates' mean log-probs on three content-free documents ("N/A", "",
  "[MASK]") are subtracted before normalising, removing the model's prior.
  ``calibrate_topic`` is on: uncalibrated, the bundled teacher answers "math" for
  almost any page. ``calibrate_edu`` is off: it spread the argmax labels but lowered
  the rank correlation of the expected score with hand labels.

Measured with the bundled SmolLM2-135M-Instruct (fp32, 2 shared CPU cores, ~0.3
documents/s, two ~300-token forwards per document) on 24 hand-labelled pages of all
topics (educational to spam): the expected score has Spearman ~0.5 with the hand
scores (AUC ~0.8 for pages we rated >= 3 against <= 1), but its range is narrow
(1.75-2.2) and the argmax label is 1 for every page; calibrated topics are right
for ~54% of pages (13 labels; majority baseline 17%). Weak but not empty labels:
enough to exercise the pipeline, not to curate real data (use a strong teacher
with ``method = "json"`` for that).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from phiforge.dataflow.step import StepContext
from phiforge.dataflow.templates import parse_template
from phiforge.errors import ConfigError

TOPICS = ("math", "science", "technology", "programming", "medicine", "history", "arts", "travel", "culture",
          "entertainment", "sports", "business", "other")
STEM_TOPICS = frozenset({"math", "science", "technology", "programming", "medicine"})
EDU_VALUES = (0, 1, 2, 3, 4, 5)
EDU_PREFIX = "Educational value: "  # the forced start of the teacher's reply (logprob method)
TOPIC_PREFIX = "Topic:"  # topic candidates follow with a leading space: " history"
CONTENT_FREE = ("N/A", "", "[MASK]")  # the calibration documents (Zhao et al. 2021)

_RUBRIC = """\
Rate how useful the document below would be for teaching, from primary school to university.
Start from 0 and add one point for each statement that is true:
- It contains some real information about an educational subject, even if mixed with ads,
  navigation or other irrelevant text.
- It covers an educational subject coherently, even if superficially or incompletely.
- It would help in a lesson or self-study: it introduces key ideas clearly.
- It explains concepts well, with examples, steps or evidence, like a good tutorial or textbook section.
- It is outstanding teaching material: thorough, accurate and easy to follow.
Pages that are only ads, menus, listings, spam or gibberish score 0."""


class _Config(BaseModel):
    """Base of this package's configs: unknown keys rejected, defaults validated.

    The same settings as ``recipe.schema.Section``, not imported from there: the recipe
    schema may validate these configs while it is itself being imported (a cycle).
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)


def _template(id_: str, description: str, body: str):
    return parse_template(f"---\nid: {id_}\nversion: 1\ndescription: {description}\n---\n{body}",
                          path=f"{__name__}:{id_}")


EDU_TEMPLATE = _template("curate_edu_score", "Web document educational value 0-5 (logprob annotation).",
                         _RUBRIC + '\n\nDocument:\n"""\n{document}\n"""\n\n'
                         "Reply with the total score only: one digit from 0 to 5.")
TOPIC_TEMPLATE = _template("curate_topic", "Web document topic, one of a fixed list (logprob annotation).",
                           'Document:\n"""\n{document}\n"""\n\nWhich topic is this document about? '
                           "Choose one of: {topics}. Reply with the topic only.")
JSON_TEMPLATE = _template("curate_annotate_json", "Web document educational value 0-5 and topic as JSON.",
                          _RUBRIC + "\n\nAlso name the document's main topic, one of: {topics} "
                          "(other if none fits).\n\nDocument:\n\"\"\"\n{document}\n\"\"\"\n\n"
                          'Reply with only a JSON object, for example: {{"educational_value": 2, "topic": "history"}}')
TEMPLATES = (EDU_TEMPLATE, TOPIC_TEMPLATE, JSON_TEMPLATE)


class AnnotateConfig(_Config):
    """How the teacher labels documents (see the module docstring)."""

    method: Literal["logprob", "json"] = Field("logprob", description=(
        "'logprob': labels read off the next-token log-probs (needs backend.score and backend.tokenizer; "
        "for small teachers); 'json': the teacher writes JSON, re-asked when invalid (strong teachers)"))
    topics: list[str] = Field(list(TOPICS), min_length=2, description="the topic labels (lower case, distinct)")
    max_chars: int = Field(2000, ge=50, description=(
        "document characters shown to the teacher (cut at a word boundary). UNCONFIRMED: ~500 tokens"))
    max_tokens: int | None = Field(512, ge=16, description=(
        "then at most this many document tokens, when the backend has a tokenizer; None: no token cut"))
    batch_size: int = Field(16, ge=1, description="documents per backend call")
    calibrate_topic: bool = Field(True, description=(
        "logprob: subtract the topics' log-probs on content-free documents (Zhao et al. 2021); without it "
        "the bundled teacher answers 'math' for nearly everything"))
    calibrate_edu: bool = Field(False, description=(
        "logprob: the same for the six digits (off: it did not help the bundled teacher's scores)"))
    temperature: float = Field(0.0, ge=0.0, description="json: sampling temperature (greedy: stable labels)")
    max_new_tokens: int = Field(64, ge=8, description="json: reply limit, tokens")
    max_reasks: int = Field(2, ge=0, description="json: re-asks of a reply that is not valid JSON")
    seed: int = Field(0, ge=0, description="json: sampling seed")

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: list[str]) -> list[str]:
        value = [t.strip().lower() for t in value]
        if any(not t for t in value) or len(set(value)) != len(value):
            raise ValueError(f"topics must be distinct non-empty names, got {value}")
        return value

    @model_validator(mode="after")
    def _other(self):
        if "other" not in self.topics:
            raise ValueError("topics must include 'other' (the label for documents no topic fits)")
        return self


@dataclass(frozen=True, slots=True)
class Annotation:
    """The teacher's labels for one document.

    ``edu``: expected educational value in [0, 5] (logprob) or the integer given
    (json); ``edu_label``: the most likely / given integer; ``topic``: one of the
    topics. All three are None when the teacher gave no usable answer (``error``
    says why). ``raw`` is the JSON reply (json method); ``edu_probs`` the six
    probabilities and ``topic_prob`` the chosen topic's probability (logprob method).
    """

    edu: float | None
    edu_label: int | None
    topic: str | None
    raw: str | None = None
    method: str = "json"
    topic_prob: float | None = None
    edu_probs: tuple[float, ...] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.edu is not None and self.topic is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["edu_probs"] = list(self.edu_probs) if self.edu_probs is not None else None
        return d

    @classmethod
    def from_dict(cls, row: dict) -> "Annotation":
        row = dict(row)
        if row.get("edu_probs") is not None:
            row["edu_probs"] = tuple(row["edu_probs"])
        return cls(**row)


def failed(error: str, method: str, raw: str | None = None) -> Annotation:
    return Annotation(None, None, None, raw=raw, method=method, error=error)


# --------------------------------------------------------------------------- entry point


def annotate(texts: Sequence[str], backend, config: AnnotateConfig | None = None,
             ctx: StepContext | None = None) -> list[Annotation]:
    """One :class:`Annotation` per text, in order; counters go to ``ctx`` when given."""
    cfg = config or AnnotateConfig()
    ctx = ctx or StepContext("annotate")
    tok = getattr(backend, "tokenizer", None)
    docs = [truncate(t, cfg.max_chars, tok, cfg.max_tokens) for t in texts]
    if cfg.method == "logprob":
        scorer = _LogprobAnnotator(backend, cfg, ctx)
        run = scorer.annotate
    else:
        run = lambda batch: _annotate_json(batch, backend, cfg, ctx)  # noqa: E731
    out: list[Annotation] = []
    for start in range(0, len(docs), cfg.batch_size):
        batch = docs[start:start + cfg.batch_size]
        live = [i for i, d in enumerate(batch) if d.strip()]
        got = dict(zip(live, run([batch[i] for i in live]))) if live else {}
        out += [got.get(i) or failed("empty document", cfg.method) for i in range(len(batch))]
    ctx.stat("annotated", sum(a.ok for a in out))
    ctx.stat("annotation_failed", sum(not a.ok for a in out))
    return out


def truncate(text: str, max_chars: int, tokenizer=None, max_tokens: int | None = None) -> str:
    """The first ``max_chars`` characters (at a word boundary if one is near), then ``max_tokens`` tokens."""
    text = (text or "").strip()
    if len(text) > max_chars:
        cut = text.rfind(" ", int(max_chars * 0.8), max_chars + 1)
        text = text[:cut if cut > 0 else max_chars].rstrip()
    if tokenizer is not None and max_tokens is not None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            text = tokenizer.decode(ids[:max_tokens]).rstrip()
    return text


def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------- logprob method


def expected_score(logprobs: Sequence[float], values: Sequence[float]) -> tuple[float, int, list[float]]:
    """(probability-weighted mean of ``values``, index of the most likely, the renormalised probabilities).

    The candidates' log-probs are renormalised over the candidates (softmax), as in
    G-Eval scoring; ties in the argmax go to the first candidate.
    """
    top = max(logprobs)
    weights = [math.exp(v - top) for v in logprobs]
    total = sum(weights)
    probs = [w / total for w in weights]
    best = max(range(len(probs)), key=lambda i: (probs[i], -i))
    return sum(p * v for p, v in zip(probs, values)), best, probs


def _log_softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    norm = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - norm for v in values]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


class _LogprobAnnotator:
    """Prompts, candidate token ids and (optional) calibration offsets for one ``annotate`` call."""

    def __init__(self, backend, cfg: AnnotateConfig, ctx: StepContext):
        tok = getattr(backend, "tokenizer", None)
        if tok is None or not callable(getattr(backend, "score", None)):
            raise ConfigError("annotate: method = 'logprob' needs a backend with a tokenizer and score() "
                              "(local, or http with models.<role>.tokenizer set); use method = 'json'")
        self.backend, self.cfg, self.ctx, self.tok = backend, cfg, ctx, tok
        self.digits = [self._ids(str(d)) for d in EDU_VALUES]
        if any(len(d) != 1 for d in self.digits):
            raise ConfigError("annotate: method = 'logprob' needs the digits 0-5 to be single tokens of the "
                              "teacher's tokenizer; use method = 'json'")
        self.topic_ids = [self._ids(" " + t) for t in cfg.topics]
        _check_prefix_free(cfg.topics, self.topic_ids)
        self.edu_prefix, self.topic_prefix = self._ids(EDU_PREFIX), self._ids(TOPIC_PREFIX)
        self.topics_text = ", ".join(cfg.topics)
        self.offsets = self._calibration() if cfg.calibrate_edu or cfg.calibrate_topic else None
        for t in (EDU_TEMPLATE, TOPIC_TEMPLATE):
            ctx.use_template(t)

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _prompts(self, doc: str) -> tuple[list[int], list[int]]:
        edu = self.ctx.render(EDU_TEMPLATE, document=doc)
        topic = self.ctx.render(TOPIC_TEMPLATE, document=doc, topics=self.topics_text)
        return (list(self.backend.chat_prompt(_user(edu))) + self.edu_prefix,
                list(self.backend.chat_prompt(_user(topic))) + self.topic_prefix)

    def _logprobs(self, docs: list[str], edu: bool = True, topic: bool = True) -> list[tuple[list, list]]:
        """Per document: the six digits' and the topics' (summed) log-probs, from ONE score call
        (a part not asked for is an empty list)."""
        prompts, conts = [], []
        for doc in docs:
            edu_ids, topic_ids = self._prompts(doc)
            if edu:
                prompts += [edu_ids] * len(self.digits)
                conts += self.digits
            if topic:
                prompts += [topic_ids] * len(self.topic_ids)
                conts += self.topic_ids
        flat = [sum(v) for v in self.backend.score(prompts, conts)]
        self.ctx.stat("score_calls")
        self.ctx.stat("scored_continuations", len(conts))
        n_edu, n_topic = len(self.digits) * edu, len(self.topic_ids) * topic
        rows = [flat[k:k + n_edu + n_topic] for k in range(0, len(flat), n_edu + n_topic)]
        return [(row[:n_edu], row[n_edu:]) for row in rows]

    def _calibration(self) -> tuple[list[float], list[float]]:
        """Mean renormalised log-probs over the content-free documents (zeros where not calibrated)."""
        cfg = self.cfg
        got = self._logprobs(list(CONTENT_FREE), edu=cfg.calibrate_edu, topic=cfg.calibrate_topic)
        edu = [_mean(_log_softmax(e)[i] for e, _ in got) for i in range(len(self.digits))] \
            if cfg.calibrate_edu else [0.0] * len(self.digits)
        topic = [_mean(_log_softmax(t)[i] for _, t in got) for i in range(len(self.topic_ids))] \
            if cfg.calibrate_topic else [0.0] * len(self.topic_ids)
        return edu, topic

    def annotate(self, docs: list[str]) -> list[Annotation]:
        out = []
        for edu_lp, topic_lp in self._logprobs(docs):
            if self.offsets is not None:
                edu_lp = [a - b for a, b in zip(edu_lp, self.offsets[0])]
                topic_lp = [a - b for a, b in zip(topic_lp, self.offsets[1])]
            edu, label, probs = expected_score(edu_lp, EDU_VALUES)
            _, best, topic_probs = expected_score(topic_lp, range(len(topic_lp)))
            out.append(Annotation(round(edu, 4), EDU_VALUES[label], self.cfg.topics[best], method="logprob",
                                  topic_prob=round(topic_probs[best], 4),
                                  edu_probs=tuple(round(p, 4) for p in probs)))
        return out


def _check_prefix_free(topics: list[str], ids: list[list[int]]) -> None:
    """No topic's tokens may start another's ("art" / "arts"): the scores would not compare like for like."""
    for a, ta in zip(topics, ids):
        for b, tb in zip(topics, ids):
            if a != b and len(ta) <= len(tb) and tb[:len(ta)] == ta:
                raise ConfigError(f"annotate: topic {a!r} tokenizes as a prefix of {b!r}; rename one of them "
                                  "(topics must be distinguishable from their first differing token)")


# --------------------------------------------------------------------------- json method


@lru_cache(maxsize=8)
def json_schema(topics: tuple[str, ...]) -> type[BaseModel]:
    """The pydantic model of the JSON reply for this topic list (numbers 0-5; topic case-insensitive)."""

    class EduTopic(BaseModel):
        educational_value: float = Field(ge=0, le=5)
        topic: str

        @field_validator("educational_value", mode="before")
        @classmethod
        def _number(cls, v):
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ValueError("must be a number from 0 to 5")
            return v

        @field_validator("topic")
        @classmethod
        def _known(cls, v: str) -> str:
            t = v.strip().lower()
            if t not in topics:
                raise ValueError(f"must be one of {', '.join(topics)}; got {v!r}")
            return t

    return EduTopic


def _annotate_json(docs: list[str], backend, cfg: AnnotateConfig, ctx: StepContext) -> list[Annotation]:
    from phiforge.backends.base import SamplingParams
    from phiforge.synth.base import GenerationStep
    from phiforge.synth.jsonask import ask_json

    caller = GenerationStep(backend, batch_size=cfg.batch_size, seed=cfg.seed)
    topics = ", ".join(cfg.topics)
    prompts = [_user(ctx.render(JSON_TEMPLATE, document=d, topics=topics)) for d in docs]
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_new_tokens, seed=cfg.seed)
    answers = ask_json(caller, ctx, prompts, json_schema(tuple(cfg.topics)), params, max_reasks=cfg.max_reasks)
    out = []
    for a in answers:
        if a.value is None:
            out.append(failed(a.error or "invalid JSON", "json", raw=a.reply))
        else:
            edu = float(a.value.educational_value)
            out.append(Annotation(edu, int(math.floor(edu + 0.5)), a.value.topic, raw=a.reply, method="json"))
    return out
