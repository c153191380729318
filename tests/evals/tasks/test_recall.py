import json
import os
import time

import pytest

from phiforge.errors import ConfigError
from phiforge.evals.registry import make_task
from phiforge.evals.task import TaskOptions
from phiforge.evals.tasks.recall import JSONKVRecall

UUID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"


@pytest.fixture(scope="module")
def tok():
    """The bundled teacher's tokenizer (SmolLM2: a real BPE with a ChatML template that adds a system turn)."""
    from transformers import AutoTokenizer

    from phiforge.backends.teacher import teacher_model_dir

    try:
        path = teacher_model_dir()
    except ConfigError as e:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(str(e))
    return AutoTokenizer.from_pretrained(str(path))


def recall(tok=None, seed=0, **params):
    return make_task("recall", TaskOptions(seed=seed, params=params), tokenizer=tok)


def chat_tokens(tok, task, item) -> int:
    """What the runner will feed the model: the chat-rendered prompt (or the plain text)."""
    prompt = task.prompt(item, 0)
    if isinstance(prompt, str):
        return len(tok(prompt, add_special_tokens=False)["input_ids"])
    return len(tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False))


@pytest.mark.parametrize("fmt", ["chat", "text"])
def test_prompts_fill_the_target_length_minus_the_answer_budget(tok, fmt):
    task = recall(tok, lengths=[512, 2048], per_length=3, format=fmt)
    items = task.load()
    assert [it["id"] for it in items] == ["len512-0", "len2048-0", "len512-1", "len2048-1", "len512-2", "len2048-2"]
    for it in items:
        real = chat_tokens(tok, task, it)
        budget = it["length"] - task.n_max_tokens
        assert real == it["tokens"] and real <= budget
        assert real >= budget - 1.5 * task.tokens_per_pair(), (it["id"], real, budget)
        if it["length"] == 2048:
            assert real >= 0.95 * budget
    assert task.chat is (fmt == "chat") and isinstance(task.prompt(items[0], 0), str) is (fmt == "text")


def test_item_fields_and_key_depths(tok):
    task = recall(tok, lengths=[1024], per_length=5)
    items = task.load()
    assert [it["depth"] for it in items] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for it in items:
        pairs = json.loads(it["context"])
        keys = list(pairs)
        assert len(keys) == it["n_pairs"] and pairs[it["key"]] == it["value"]
        assert keys.index(it["key"]) == it["position"] == round(it["depth"] * (len(keys) - 1))
        assert it["key"] in task.prompt(it, 0)[0]["content"].rsplit("\n\n", 1)[1]
    assert items[0]["position"] == 0 and items[-1]["position"] == items[-1]["n_pairs"] - 1
    cycled = recall(tok, lengths=[512], per_length=4, depths=[0.1, 0.9]).load()
    assert [it["depth"] for it in cycled] == [0.1, 0.9, 0.1, 0.9]


def test_items_are_deterministic_by_seed(tok):
    a = recall(tok, lengths=[512], per_length=2).load()
    assert a == recall(tok, lengths=[512], per_length=2).load()
    b = recall(tok, seed=1, lengths=[512], per_length=2).load()
    assert [it["key"] for it in a] != [it["key"] for it in b]
    assert a[0]["key"] != a[1]["key"]


def test_a_target_without_room_for_the_json_is_a_config_error(tok):
    with pytest.raises(ConfigError, match="no room"):
        make_task("recall", TaskOptions(max_tokens=300, params={"lengths": [300]}), tokenizer=tok).load()


def test_a_16k_item_is_fast(tok):
    task = recall(tok, lengths=[16384], per_length=1)
    task.make_item(16384, 99)  # warm the per-pair estimate and the template size
    t0 = time.perf_counter()
    item = task.make_item(16384, 0)
    assert time.perf_counter() - t0 < 0.5
    assert 0.97 * (16384 - 64) <= item["tokens"] <= 16384 - 64


@pytest.mark.parametrize("response, score, extracted, label", [
    (UUID, 1.0, UUID, "correct"),
    (f' "{UUID.upper()}"\n', 1.0, UUID.upper(), "correct"),
    (f"The value is {UUID}.", 1.0, UUID, "correct"),
    ("The value is 1b4e28ba-2fa1-41d2-883f-0016d3cca428.", 0.0, "1b4e28ba-2fa1-41d2-883f-0016d3cca428", "incorrect"),
    ("1b4e28ba-2fa1", 0.0, "1b4e28ba-2fa1", "incorrect"),
    ("  \n", 0.0, None, "blank"),
])
def test_subem_grading(response, score, extracted, label):
    task = recall()
    g = task.grade({"id": "len4096-0", "length": 4096, "depth": 0.5, "value": UUID}, response, 0)
    assert (g.score, g.extracted, g.label) == (score, extracted, label)
    assert g.extra == {"length": 4096, "depth": 0.5}


def test_metrics_overall_and_per_length():
    task = recall()
    groups = [[{"id": "len4096-0", "score": 1.0, "extra": {"length": 4096}}],
              [{"id": "len4096-1", "score": 0.0, "length": 4096}],
              [{"item_id": "len16384-0", "score": 1.0, "extra": {}}]]  # the length comes from the id
    assert task.metrics(groups) == {"subem": pytest.approx(2 / 3), "subem/4096": 0.5, "subem/16384": 1.0}
    assert list(task.metrics(groups)) == ["subem", "subem/4096", "subem/16384"]
    assert task.primary_metric == "subem" and task.metric_is_item_mean


def test_items_fitting():
    task = recall()
    items = [{"id": f"len{n}-0", "length": n} for n in (4096, 8192, 16384)]
    kept, skipped = task.items_fitting(items, 8192)
    assert [it["length"] for it in kept] == [4096, 8192] and skipped == [16384]
    assert task.items_fitting(items, None) == (items, [])


def test_defaults_and_config_errors():
    task = recall()
    assert task.lengths == [4096, 8192, 16384] and task.per_length == 20 and len(task.depths) == 20
    assert (task.mode, task.chat, task.sampling_temperature, task.n_max_tokens) == ("generate", True, 0.0, 64)
    assert JSONKVRecall.bundled_data and recall(per_length=1).depths == [0.5]
    with pytest.raises(ConfigError, match="tokenizer"):
        task.load()
    for params, message in [({"lengths": [100]}, "lengths"), ({"lengths": 4096}, "lengths"),
                            ({"per_length": 0}, "per_length"), ({"depths": [1.5]}, "depths"),
                            ({"format": "html"}, "format"), ({"size": 1}, "unknown parameter")]:
        with pytest.raises(ConfigError, match=message):
            recall(**params)
