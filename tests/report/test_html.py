"""report.html: one self-contained file that survives missing and malformed run files."""

import json
import re

import pytest

import phiforge
from phiforge.report import SECTIONS, RunView, build_report, register_section
from phiforge.report import html as report_html

ORDER = ["data", "tokenizer", "pretrain", "midtrain", "eval", "report"]
EVIL = "<script>alert('x')</script> so 2 < 3 & Answer: 7"


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _metrics(steps, base):
    rows = []
    for s in range(1, steps + 1):
        rows.append({"kind": "train", "step": s, "loss": base / s ** 0.3, "lr": 1e-3, "grad_norm": 1.0,
                     "tokens": s * 4096, "tokens_per_s": 3000.0 + s, "elapsed_s": 1.4 * s})
        if s % 5 == 0:
            rows.append({"kind": "eval", "step": s, "val_loss": {"web": base / s ** 0.25, "math": base / s ** 0.35}})
    return rows


def _mixture(rows, total):
    return {"seq_len": 256, "total_tokens": total, "rows": rows}


@pytest.fixture()
def full_run(tmp_path):
    run = tmp_path / "runs" / "demo"
    _write(run / "config.resolved.json", {"run": {"name": "demo", "seed": 0}, "model": {"preset": "tiny"},
                                          "report": {"note": "<b>not bold</b>"}})
    stages = {s: {"status": "done", "wall_s": 10.0 + i, "peak_rss_mb": 500.0 + 100 * i} for i, s in enumerate(ORDER)}
    stages["report"] = {"status": "pending", "wall_s": None, "peak_rss_mb": None}
    _write(run / "run.json", {"name": "demo", "stages": stages, "order": ORDER})
    for s in ORDER[:-1]:
        _write(run / s / "stats.json", {"stage": s, "wall_s": 1.0, "peak_rss_mb": 100.0})
    _write_jsonl(run / "pretrain" / "metrics.jsonl", _metrics(20, 7.5))
    _write_jsonl(run / "midtrain" / "metrics.jsonl", _metrics(10, 3.0))
    _write(run / "pretrain" / "mixture.json", _mixture(
        [{"source": "synthetic", "fraction": 0.4, "unique_tokens": 123457, "planned_tokens": 409600, "epochs": 3.32},
         {"source": "web", "fraction": 0.6, "unique_tokens": 987654, "planned_tokens": 614400, "epochs": 0.62}],
        1024000))
    _write(run / "midtrain" / "mixture.json", _mixture(
        [{"source": "long", "fraction": 1.0, "unique_tokens": 55555, "planned_tokens": 111110, "epochs": 2.0}], 111110))
    models = {"pretrain": {"n": 200, "accuracy": 0.375, "accuracy_ci95": [0.31, 0.445],
                           "extraction_failure_rate": 0.05, "accuracy_by_steps": {"1": 0.6, "2": 0.3, "10": 0.1}},
              "midtrain": {"n": 200, "accuracy": 0.4225, "accuracy_ci95": [0.355, 0.492],
                           "extraction_failure_rate": 0.02, "accuracy_by_steps": {"1": 0.7, "2": 0.35}}}
    _write(run / "eval" / "stats.json", {"stage": "eval", "wall_s": 3.0, "peak_rss_mb": 300.0, "models": models,
                                         "baselines": {"most_common_answer": 0.085, "last_number_in_question": 0.12}})
    for m in models:
        preds = [{"id": f"q{i}", "question": f"What is {i} + 4?", "answer": str(i + 4),
                  "completion": EVIL if i == 0 else f"{i} + 4 = {i + 4}. Answer: {i + 4}",
                  "prediction": str(i + 4), "correct": i != 0} for i in range(8)]
        _write_jsonl(run / "eval" / "predictions" / f"{m}.jsonl", preds)
    return run


def test_full_report_is_one_self_contained_file(full_run):
    out = build_report(full_run)
    assert out == full_run / "report.html"
    assert [p.name for p in full_run.iterdir() if p.name.startswith(".report")] == []  # no temp left over
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing loaded from outside
    for stage in ORDER:
        assert f"<td>{stage}</td>" in html
    assert f"phiforge {phiforge.__version__}" in html and "generated 2" in html
    for number in ("123,457", "987,654", "409,600", "3.32", "40.0%", "55,555", "1,024,000"):
        assert number in html, number
    assert html.count('<img class="plot" alt=') == 2
    assert '<img class="plot" alt="pretrain loss curves" src="data:image/png;base64,' in html
    assert "37.5%" in html and "42.2%" in html and "[31.0%, 44.5%]" in html
    assert "baseline: most_common_answer" in html and "8.5%" in html
    assert "10-step acc." in html
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; so 2 &lt; 3 &amp; Answer: 7" in html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html  # config is escaped too
    assert html.count("first 5 of 8 predictions") == 2
    assert "Warnings" not in html


def test_sections_in_order(full_run):
    html = build_report(full_run).read_text()
    marks = ["<h1>", 'id="stages"', 'id="mixture"', 'id="loss"', 'id="evaluation"', 'id="config"']
    positions = [html.index(m) for m in marks]
    assert positions == sorted(positions)


def test_almost_empty_run_dir_still_builds(tmp_path):
    run = tmp_path / "fresh"
    _write(run / "run.json", {"name": "fresh <run>", "stages": {s: {"status": "pending", "wall_s": None,
                                                                    "peak_rss_mb": None} for s in ORDER},
                              "order": ORDER})
    out = build_report(run, out=tmp_path / "elsewhere" / "r.html")
    html = out.read_text()
    assert out == tmp_path / "elsewhere" / "r.html"
    assert "fresh &lt;run&gt;" in html
    assert html.count("not run") >= 5  # two mixtures, two loss curves, eval, config
    assert "data:image/png" not in html
    assert "Warnings" not in html


def test_empty_dir_without_run_json(tmp_path):
    html = build_report(tmp_path).read_text()
    assert "run.json not found" in html and tmp_path.name in html


def test_malformed_files_warn_and_still_build(full_run):
    path = full_run / "pretrain" / "metrics.jsonl"
    path.write_text(path.read_text() + '{"kind": "train", "step": 21, "loss": 1.\n')  # truncated by a crash
    (full_run / "eval" / "stats.json").write_text("{not json")
    html = build_report(full_run).read_text()
    assert '<div class="warn"><strong>Warnings</strong>' in html
    assert "pretrain/metrics.jsonl: skipped 1 malformed line(s) (line 25)" in html
    assert "eval/stats.json: malformed JSON" in html
    assert html.count("data:image/png;base64,") == 2  # the good rows still plot
    assert html.index("Warnings") < html.index('id="stages"')


def test_wrong_shapes_do_not_crash(full_run):
    _write(full_run / "run.json", ["not", "an", "object"])
    _write(full_run / "pretrain" / "mixture.json", {"rows": [{"source": "x", "fraction": "lots"}, 3]})
    _write_jsonl(full_run / "midtrain" / "metrics.jsonl", [{"kind": "train", "step": "one", "loss": None}, 5])
    html = build_report(full_run).read_text()
    assert "midtrain/metrics.jsonl has no losses" in html
    assert html.count("data:image/png;base64,") == 1


def test_register_section_adds_a_section(full_run, monkeypatch):
    monkeypatch.setattr(report_html, "SECTIONS", list(SECTIONS))

    def sft_summary(view: RunView):
        stats = view.json("sft/stats.json")
        return f'<section id="sft"><h2>SFT</h2>{"not run" if stats is None else stats["n"]}</section>'

    def broken(view: RunView):
        raise RuntimeError("boom <here>")

    assert register_section(sft_summary, after="loss_curves") is sft_summary
    register_section(broken)
    names = [f.__name__ for f in report_html.SECTIONS]
    assert names.index("sft_summary") == names.index("loss_curves") + 1 and names[-1] == "broken"
    register_section(sft_summary, after="loss_curves")  # re-registering replaces, no duplicate
    assert [f.__name__ for f in report_html.SECTIONS].count("sft_summary") == 1
    with pytest.raises(ValueError, match="no section named"):
        register_section(lambda v: None, after="nope")
    _write(full_run / "sft" / "stats.json", {"n": 4242})
    html = build_report(full_run).read_text()
    assert html.index('id="loss"') < html.index('<section id="sft"><h2>SFT</h2>4242') < html.index('id="evaluation"')
    assert "Section <code>broken</code> could not be rendered: RuntimeError: boom &lt;here&gt;" in html
    assert len(SECTIONS) == 11  # the module-level registry (6 core + synth + 2 post-training + benchmarks + curation) is untouched


def test_runview_caches_and_reports_missing(tmp_path):
    _write(tmp_path / "a.json", {"x": 1})
    view = RunView(tmp_path)
    assert view.json("a.json") == {"x": 1}
    (tmp_path / "a.json").write_text("{}")
    assert view.json("a.json") == {"x": 1}  # cached for the whole build
    assert view.json("missing.json") is None and view.jsonl("missing.jsonl") is None
    assert view.warnings == []


def test_synth_page_shows_counts_drop_reasons_and_examples(tmp_path):
    run = tmp_path / "r"
    _write(run / "synth" / "stats.json", {"pipelines": {"web_rewrite": {
        "input": "web", "seeds": 4, "records_out": 1, "documents": 1, "seconds": 3.0, "templates": ["t@1"],
        "steps": [{"technique": "rewrite", "records_out": 1, "drop_reasons": {"answer_mismatch": 3},
                   "counters": {"model_calls": 4, "prompt_tokens": 400, "completion_tokens": 100}}]}}})
    _write(run / "synth" / "examples.json", {"web_rewrite": {
        "kept": [{"id": "a/0", "text": "Problem: 1 + 1 <b>", "metadata": {"answer": 2}}],
        "dropped": {"rewrite: answer_mismatch": [{"id": "b/0", "text": "wrong", "metadata": {}}]}}})
    html = build_report(run).read_text()
    assert "Synthetic data" in html and "answer_mismatch" in html and "Problem: 1 + 1 &lt;b&gt;" in html
    assert "500.0" in html  # tokens per kept record
