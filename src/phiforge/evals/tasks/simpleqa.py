"""SimpleQA as simple-evals scores it: correct / incorrect / not attempted, and F1 over the three.

Why: SimpleQA is where Phi-4's post-training visibly trades accuracy for abstention
(report §6, Table 1: 3.0; Fig. 6 and §6.5 of ``docs/phi4-recipe.md``). simple-evals'
headline is an F1 of "correct among all" and "correct among attempted", which
*penalises* abstaining: (6% correct, 94% wrong) gives F1 = 6%, while (3% correct, 3%
wrong, 94% declined) gives F1 = 5.6%, the report's own example. ``metrics`` computes
exactly that.

The model sees the bare question. A grader model (``grader`` backend; simple-evals
uses GPT-4o) sees our rewording of simple-evals' grading prompt: examples of CORRECT,
INCORRECT and NOT_ATTEMPTED answers, the rules for numbers and partial answers, and a
request to reply with the letter A, B or C. Its reply is read as the first standalone
letter A/B/C, else the first grade word, else NOT_ATTEMPTED (simple-evals takes the
first A/B/C character anywhere, which reads "INCORRECT" as C; ours does not).

``params = {"grader": "auto" | "llm" | "rules"}``: ``auto`` (default) uses the grader
model when one is given, else the rules; ``llm`` requires one. The rules are our
offline stand-in, not simple-evals: after normalising (lower case, no punctuation or
articles) the response is *correct* when it contains the gold answer as words, or the
gold is one number (with at most a unit word, "1.73 m") that the response also
states; *not attempted* when it is empty or hedges ("I don't know", "I'm not sure",
"cannot determine", "no information", ...) without containing the gold; otherwise
*incorrect*. They cannot see paraphrases or contradictions, so report which grader
produced a number (each grade records it in ``extra["grader"]``).

Items: ``problem`` and ``answer`` (the columns of the SimpleQA release).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from phiforge.backends.base import SamplingParams
from phiforge.errors import ConfigError
from phiforge.evals.task import Grade, Task
from phiforge.evals.tasks.simple_evals import item_mean, user_message

LABELS = ("correct", "incorrect", "not_attempted")
GRADERS = ("auto", "llm", "rules")
GRADER_PARAMS = SamplingParams(n=1, temperature=0.0, max_tokens=32, logprobs=False)

GRADER_TEMPLATE = """\
You will see a question, its gold target and a predicted answer. Grade the predicted answer as one of \
["CORRECT", "INCORRECT", "NOT_ATTEMPTED"]. Examples of each grade come first, then the answer to grade.


Examples of CORRECT predicted answers:
```
Question: What are the names of Barack Obama's children?
Gold target: Malia Obama and Sasha Obama
Predicted answer 1: sasha and malia obama
Predicted answer 2: most people would say Malia and Sasha, but I'm not sure and would have to double check
Predicted answer 3: Barack Obama has two daughters, Malia Ann and Natasha Marian, usually called Malia Obama and \
Sasha Obama. Malia was born on July 4, 1998, and Sasha on June 10, 2001.
```
They are CORRECT because:
    - They contain all of the important information in the gold target.
    - Nothing in them contradicts the gold target.
    - Only meaning counts: capitalisation, punctuation, grammar and order do not.
    - Hedging and guessing are fine as long as the gold target is fully included and nothing stated is wrong.


Examples of INCORRECT predicted answers:
```
Question: What are the names of Barack Obama's children?
Gold target: Malia and Sasha
Predicted answer 1: Malia.
Predicted answer 2: Malia, Sasha, and Susan.
Predicted answer 3: Barack Obama does not have any children.
Predicted answer 4: I think it's either Malia and Sasha. Or it could be Malia and Jackie. Or it could be Joey and Malia.
Predicted answer 5: I don't know their exact names, but I can tell you that Barack Obama has three children.
Predicted answer 6: You may mean Betsy and Olivia. You should confirm the details with up-to-date references, though.
Predicted answer 7: Obama's child may be named James, but please check the latest information, as this may have \
changed since my knowledge was last updated.
```
They are INCORRECT because:
    - A factual statement in them contradicts the gold target. A wrong statement stays INCORRECT even when it \
is hedged ("it is possible that", "although I'm not sure, I think").


Examples of NOT_ATTEMPTED predicted answers:
```
Question: What are the names of Barack Obama's children?
Gold target: Malia and Sasha
Predicted answer 1: I don't know.
Predicted answer 2: I need more context about which Obama you mean.
Predicted answer 3: I cannot answer this without searching the web, but I can tell you that Barack Obama has two \
children.
Predicted answer 4: Barack Obama has two children. I know one of them is Malia, but I'm not sure about the other.
```
They are NOT_ATTEMPTED because:
    - The important information in the gold target is missing from the answer.
    - Nothing in the answer contradicts the gold target.


Further rules:
- When the gold target is a number, the predicted answer must be right to the last significant figure of the \
gold target. For the question "How many citations does the Transformer paper have?" with gold target "120k":
    - "120k", "124k" and "115k" are CORRECT;
    - "100k" and "113k" are INCORRECT;
    - "around 100k" and "more than 50k" are NOT_ATTEMPTED, since they neither confirm nor contradict the gold target.
- The gold target may hold more information than the question asks for; the predicted answer needs only what \
the question asks for.
    - For "In which episode did Derek and Meredith legally marry in Grey's Anatomy?" with gold target \
"Season 7, Episode 20: White Wedding", both "Season 7, Episode 20" and "White Wedding" are CORRECT.
- Do not penalise leaving out what the question already makes clear.
    - For "What city is OpenAI headquartered in?" with gold target "San Francisco, California", "San Francisco" \
is CORRECT.
    - For "What award did A pretrainer's guide to training data: Measuring the effects of data age, domain \
coverage, quality, & toxicity win at NAACL '24?" with gold target "Outstanding Paper Award", "Outstanding Paper" \
is CORRECT, since "award" is implied by the question.
    - For "What is the height of Jason Wei in meters?" with gold target "1.73 m", "1.75" is CORRECT, since the \
question fixes the unit.
    - For "What is the name of Barack Obama's wife?" with gold target "Michelle Obama", "Michelle" is CORRECT, \
since the surname can be presumed.
- Do not penalise typos in a person's name when it is clearly the same name.
    - With gold target "Hyung Won Chung", "Hyoong Won Choong", "Hyungwon Chung" and "Hyun Won Chung" are CORRECT.


Here is the answer to grade. Reply with CORRECT, INCORRECT or NOT_ATTEMPTED only; do not apologise or correct \
yourself, we only need the grade.
```
Question: {question}
Gold target: {target}
Predicted answer: {predicted_answer}
```

Grade the predicted answer to this question as one of:
A: CORRECT
B: INCORRECT
C: NOT_ATTEMPTED

Reply with just the letter "A", "B" or "C", with no other text."""

_LETTER = re.compile(r"\b([ABC])\b")
_WORD = re.compile(r"NOT[_ ]ATTEMPTED|INCORRECT|CORRECT", re.IGNORECASE)
_WORD_LABEL = {"correct": "correct", "incorrect": "incorrect", "not_attempted": "not_attempted",
               "not attempted": "not_attempted"}


def parse_grader_reply(reply: str) -> str:
    """The label in a grader's reply: a standalone A/B/C, else a grade word, else not_attempted."""
    m = _LETTER.search(reply)
    if m:
        return LABELS["ABC".index(m.group(1))]
    m = _WORD.search(reply)
    return _WORD_LABEL[m.group(0).lower()] if m else "not_attempted"


# --------------------------------------------------------------------------- offline rules

HEDGES = ("i don't know", "i do not know", "i'm not sure", "i am not sure", "not certain", "i'm unsure",
          "cannot determine", "can't determine", "unable to determine", "cannot be determined", "no information",
          "don't have information", "do not have information", "don't have any information", "no reliable information",
          "cannot answer", "can't answer", "unable to answer", "cannot provide", "can't provide", "unable to provide",
          "couldn't find", "could not find", "unable to find", "cannot find", "not able to find", "unknown to me",
          "need more context", "without more context", "cannot verify", "can't verify", "unable to verify")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def _normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (thousands commas dropped first)."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower().replace("’", "'"))
    text = re.sub(r"[^\w\s.]|(?<!\d)\.|\.(?!\d)", " ", text)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def _numbers(text: str) -> list[float]:
    return [float(x) for x in _NUM.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text))]


def _numeric_gold(gold: str) -> float | None:
    """The gold's number when the gold is one number with at most a unit word ("1.73 m", "$5", "1,200")."""
    found = _numbers(gold)
    rest = _normalise(_NUM.sub(" ", re.sub(r"(?<=\d),(?=\d{3}\b)", "", gold)))
    return found[0] if len(found) == 1 and len(rest.split()) <= 1 else None


def rule_grade(response: str, gold: str) -> str:
    """The offline stand-in for the grader model (see the module docstring)."""
    said, want = _normalise(response), _normalise(gold)
    if not said:
        return "not_attempted"
    if want and f" {want} " in f" {said} ":
        return "correct"
    if _numeric_gold(gold) is not None and _numeric_gold(gold) in _numbers(response):
        return "correct"
    lowered = response.lower().replace("’", "'")
    return "not_attempted" if any(h in lowered for h in HEDGES) else "incorrect"


# --------------------------------------------------------------------------- metrics


def simpleqa_metrics(correct: float, incorrect: float, not_attempted: float) -> dict[str, float]:
    """simple-evals' aggregate from the three shares: accuracy given attempted, and their F1."""
    attempted = correct + incorrect
    given = correct / attempted if attempted > 0 else 0.0
    f1 = 2 * given * correct / (given + correct) if given + correct > 0 else 0.0
    return {"f1": f1, "is_correct": correct, "is_incorrect": incorrect, "is_not_attempted": not_attempted,
            "is_given_attempted": attempted, "accuracy_given_attempted": given}


class SimpleQA(Task):
    """Short-form factuality (Wei et al. 2024): bare question, graded correct / incorrect / not attempted."""

    name = "simpleqa"
    description = "SimpleQA, bare question, LLM grader (or offline rules), F1 of correct and correct-given-attempted"
    max_tokens = 2048
    primary_metric = "f1"
    required_fields = ("problem", "answer")
    known_params = ("grader",)

    def __init__(self, options=None, *, tokenizer=None, grader=None):
        super().__init__(options, tokenizer=tokenizer, grader=grader)
        mode = self.param("grader", "auto")
        if mode not in GRADERS:
            raise ConfigError(f"task 'simpleqa': grader must be one of {', '.join(GRADERS)}, got {mode!r}")
        if mode == "llm" and self.grader is None:
            raise ConfigError("task 'simpleqa': grader = 'llm' needs a grader model; configure one "
                              "or use grader = 'rules'")
        self.use_llm = mode == "llm" or (mode == "auto" and self.grader is not None)

    def prompt(self, item: dict, repeat: int):
        return user_message(str(item["problem"]))

    def grade_many(self, items: Sequence[dict], responses: Sequence[str], repeats: Sequence[int]) -> list[Grade]:
        if self.use_llm:
            labels, how = self._llm_labels(items, responses), "llm"
        else:
            labels, how = [rule_grade(r, str(it["answer"])) for it, r in zip(items, responses, strict=True)], "rules"
        return [Grade(float(label == "correct"), r.strip() or None, label, {"grader": how})
                for label, r in zip(labels, responses)]

    def grade(self, item: dict, response: str, repeat: int) -> Grade:
        return self.grade_many([item], [response], [repeat])[0]

    def _llm_labels(self, items: Sequence[dict], responses: Sequence[str]) -> list[str]:
        prompts = [user_message(GRADER_TEMPLATE.format(question=it["problem"], target=it["answer"],
                                                       predicted_answer=r))
                   for it, r in zip(items, responses, strict=True)]
        result = self.grader.sample(prompts, GRADER_PARAMS)
        return [parse_grader_reply(c[0].text) for c in result.completions]

    def metrics(self, groups: Sequence[Sequence[dict]]) -> dict[str, float]:
        groups = [g for g in groups if g]
        n = len(groups) or 1
        share = {lab: sum(item_mean(g, lambda r, lab=lab: r["label"] == lab) for g in groups) / n for lab in LABELS}
        return simpleqa_metrics(share["correct"], share["incorrect"], share["not_attempted"])
