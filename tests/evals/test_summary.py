"""Bootstrap intervals, failure rates and the Table-1 comparison table."""

from __future__ import annotations

import pytest

from phiforge.errors import ConfigError
from phiforge.evals import table
from phiforge.evals.suite import model_dir_name, model_ref, parse_tasks
from phiforge.evals.summary import bootstrap_interval, summarize
from phiforge.evals.task import Task, TaskOptions


class MeanTask(Task):
    name = "mean"
    bundled_data = True


class SameButCustom(MeanTask):
    """The default metric re-implemented, so the generic (non-vectorised) bootstrap path runs."""

    def metrics(self, groups):
        return {"accuracy": sum(sum(r["score"] for r in g) / len(g) for g in groups) / len(groups)}


def groups(scores):
    return [[{"item_id": str(i), "repeat": k, "score": s, "extracted": "x", "label": ""} for k, s in enumerate(g)]
            for i, g in enumerate(scores)]


def test_vectorised_and_generic_bootstrap_agree():
    data = groups([[1.0], [0.0], [1.0], [1.0], [0.0]] * 40)
    fast = bootstrap_interval(MeanTask(), data, samples=2000)
    slow = bootstrap_interval(SameButCustom(), data, samples=2000)
    assert MeanTask().metric_is_item_mean and not SameButCustom().metric_is_item_mean
    # 200 Bernoulli(0.6) items: the 95% interval is about 0.6 +- 0.068 by the normal approximation
    for lo, hi in (fast, slow):
        assert lo == pytest.approx(0.6 - 0.068, abs=0.02) and hi == pytest.approx(0.6 + 0.068, abs=0.02)


def test_single_item_has_no_interval():
    assert bootstrap_interval(MeanTask(), groups([[1.0]])) == (None, None)


def test_summary_counts_failures_and_labels():
    data = groups([[1.0, 0.0], [0.5, 0.5]])
    data[0][1]["extracted"] = None
    data[0][1]["label"] = "no_answer"
    s = summarize(MeanTask(), data)
    assert s["score"] == pytest.approx(0.5) and s["extraction_failure_rate"] == 0.25
    assert s["labels"] == {"": 3, "no_answer": 1} and s["n_samples"] == 4


def test_table_layout():
    results = {"base": {"mmlu": {"score": 0.5, "ci95": [0.4, 0.6], "metric_scale": 100.0, "primary_metric": "accuracy"}},
               "sft": {"mmlu": {"score": 0.75, "ci95": [0.7, 0.8], "metric_scale": 100.0},
                       "amc": {"score": 91.8, "ci95": [90.0, 93.0], "metric_scale": 1.0, "primary_metric": "score"}}}
    header, rows = table.rows(results)
    assert header == ["Benchmark", "base", "sft"]
    assert rows == [["mmlu (accuracy)", "50.0 (40.0-60.0)", "75.0 (70.0-80.0)"],
                    ["amc (score)", "—", "91.8 (90.0-93.0)"]]
    assert table.markdown(results).splitlines()[0] == "| Benchmark | base | sft |"


def test_parse_tasks_and_params():
    specs = parse_tasks("mmlu=data/m.jsonl, recall", repeats=2, params=["recall.lengths=[4096,8192]"])
    assert [s.name for s in specs] == ["mmlu", "recall"]
    assert specs[0].options.path == "data/m.jsonl" and specs[0].options.repeats == 2
    assert specs[1].options.path is None and specs[1].options.params == {"lengths": [4096, 8192]}
    with pytest.raises(ConfigError, match="not in --tasks"):
        parse_tasks("mmlu=x", params=["gpqa.k=1"])
    with pytest.raises(ConfigError, match="TASK.KEY=VALUE"):
        parse_tasks("mmlu=x", params=["nonsense"])


def test_model_refs(tmp_path):
    ref = model_ref("http://127.0.0.1:8000/v1#phi-4")
    assert ref.backend == "http" and ref.base_url == "http://127.0.0.1:8000" and ref.model == "phi-4"
    with pytest.raises(ConfigError, match="served model name"):
        model_ref("http://127.0.0.1:8000")
    with pytest.raises(ConfigError, match="not a model folder"):
        model_ref(str(tmp_path))
    assert model_ref("bundled").backend == "local"
    assert model_dir_name("http://h:1#org/model") == "org_model" and model_dir_name("/a/b/ckpt") == "ckpt"


def test_task_rejects_unknown_params_and_missing_data():
    class NeedsData(Task):
        name = "needs"
        required_fields = ("question",)

    with pytest.raises(ConfigError, match="needs item data"):
        NeedsData(TaskOptions())
    with pytest.raises(ConfigError, match="unknown parameter"):
        MeanTask(TaskOptions(params={"bogus": 1}))
