"""The decontamination step: tags, drop reasons and counters (report App. B), and the index it loads."""

import json
import pickle

import pytest

from phiforge.curate.decontam import DecontamConfig
from phiforge.curate.decontam_fast import HashedIndex
from phiforge.curate.decontam_step import Decontaminate, DecontamStepConfig, build_index
from phiforge.dataflow.records import Record
from phiforge.dataflow.step import StepContext
from phiforge.errors import ConfigError, DataError


def words(prefix: str, stop: int, start: int = 0) -> str:
    return " ".join(f"{prefix}{i}" for i in range(start, stop))


def changed(text: str, index: int) -> str:
    ws = text.split()
    ws[index] = "zzz"
    return " ".join(ws)


@pytest.fixture
def index_path(tmp_path):
    """MMLU item A (20 words) and GSM item C (11 words: five 7-grams, no 13-gram), as benchmark files."""
    (tmp_path / "mmlu.jsonl").write_text(json.dumps({"id": "A", "question": words("a", 20)}) + "\n")
    (tmp_path / "gsm8k.jsonl").write_text(json.dumps({"id": "C", "question": words("c", 11)}) + "\n")
    path = tmp_path / "index" / "decontam.npz"
    build_index({"mmlu": tmp_path / "mmlu.jsonl", "gsm8k": tmp_path / "gsm8k.jsonl"}, path)
    return path


def records():
    return [
        Record("clean", text=words("x", 40)),
        Record("leak13", text=f"Intro. {words('a', 15)} outro"),
        Record("leak7", text=words("c", 11)),
        Record("partial", text=changed(words("c", 11), 9)),  # 3/5 of the 7-grams
        Record("chat", messages=[{"role": "user", "content": words("c", 5)},
                                 {"role": "assistant", "content": words("c", 11, start=5)}]),
    ]


def run(step, recs):
    ctx = StepContext(step.name)
    kept = list(step.run(iter(recs), ctx))
    return kept, ctx


def test_tags_drops_and_counters(index_path):
    step = DecontamStepConfig(index_path=str(index_path), batch_records=2).build()
    recs = records()
    kept, ctx = run(step, recs)
    assert [r.id for r in kept] == ["clean", "partial"]
    assert ctx.drops == {"contaminated_13gram": 1, "contaminated_7gram": 2}
    assert ctx.counters == {"checked": 5, "contaminated/mmlu": 1, "contaminated/gsm8k": 2, "partial/gsm8k": 1,
                            "partial": 1}
    tags = {r.id: r.metadata["decontam"] for r in recs}
    # 17 words, eleven 7-grams; nine of them are among A's fourteen: 9 / min(11, 14)
    assert tags["leak13"] == {"verdict": "contaminated", "benchmark": "mmlu", "item_id": "A", "ratio": 9 / 11,
                              "reason": "13gram"}
    assert tags["partial"] == {"verdict": "partial", "benchmark": "gsm8k", "item_id": "C", "ratio": 0.6,
                               "reason": "7gram"}
    assert tags["clean"] == {"verdict": "clean", "benchmark": "", "item_id": "", "ratio": 0.0, "reason": ""}
    assert tags["chat"]["reason"] == "7gram"  # the messages, joined, hold the item


def test_drop_partial(index_path):
    kept, ctx = run(DecontamStepConfig(index_path=str(index_path), drop_partial=True).build(), records())
    assert [r.id for r in kept] == ["clean"]
    assert ctx.drops["partial_overlap"] == 1 and "partial" not in ctx.counters


def test_the_step_pickles_as_a_path_and_loads_lazily(index_path):
    step = Decontaminate(DecontamStepConfig(index_path=str(index_path)))
    assert step.index is not None  # loaded once ...
    clone = pickle.loads(pickle.dumps(step))
    assert clone._index is None  # ... but not shipped
    assert [r.id for r in run(clone, records())[0]] == ["clean", "partial"]


def test_an_index_object_works_without_a_file():
    index = HashedIndex.build([("mmlu", "A", words("a", 20))], DecontamConfig())
    step = Decontaminate(DecontamStepConfig(), index)
    assert [r.id for r in run(pickle.loads(pickle.dumps(step)), records())[0]] == ["clean", "leak7", "partial",
                                                                                    "chat"]


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="index_path"):
        Decontaminate(DecontamStepConfig())
    with pytest.raises(ConfigError, match="drop_partial"):
        DecontamStepConfig(index_path="x.npz", drop_partial="yes")
    with pytest.raises(ConfigError, match="batch_chars"):
        DecontamStepConfig(index_path="x.npz", batch_chars=0)


def test_a_missing_index_file_says_what_to_do(tmp_path):
    step = DecontamStepConfig(index_path=str(tmp_path / "none.npz")).build()
    with pytest.raises(DataError, match="not found; build it"):
        run(step, records())
