"""The post-training report pages: Table-9-style stage table and the PTS page, from run files."""

import json

from phiforge.report import build_report

EVIL = "<script>x</script>"


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _estimate(p, n):
    return {"p": p, "n": n, "successes": round(p * n), "low": max(0, p - 0.2), "high": min(1, p + 0.2)}


def _run(tmp_path, dpo_status="done"):
    run = tmp_path / "r"
    _write(run / "run.json", {"name": "r", "stages": {"dpo": {"status": dpo_status}}})
    models = {"midtrain": {"n": 50, "accuracy": 0.4, "accuracy_ci95": [0.3, 0.5], "extraction_failure_rate": 0.1},
              "sft": {"n": 50, "accuracy": 0.6, "accuracy_ci95": [0.45, 0.7], "extraction_failure_rate": 0.0,
                      "sampled": {"temperature": 0.5, "seeds": [1, 2, 3], "mean": 0.55, "ci95": [0.5, 0.6]}},
              "dpo_judge": {"n": 50, "accuracy": 0.66, "accuracy_ci95": [0.5, 0.75], "extraction_failure_rate": 0.0}}
    _write(run / "eval" / "stats.json", {"models": models, "baselines": {}, "n_items": 50})
    _write(run / "dpo_judge" / "stats.json", {"steps": 7, "final_loss": 0.6, "pairs": {"train": 30, "valid": 4},
                                              "valid_before": {"reward_accuracy": 0.0, "logp_accuracy": 0.5},
                                              "valid_after": {"reward_accuracy": 0.75, "logp_accuracy": 0.8,
                                                              "reward_margin": 0.4}})
    _write(run / "pts" / "stats.json", {"search": {"queries": 8, "queries_searched": 5, "pivots": 1, "pairs": 1,
                                                   "completion_tokens": 4000, "tokens_per_pivot": 4000.0,
                                                   "drops": {"outside_window": 3}}})
    seg = {"start": 1, "end": 2, "kind": "pivot", "before": _estimate(0.4, 16), "after": _estimate(0.9, 24)}
    _jsonl(run / "pts" / "solutions.jsonl", [{"query_id": "q1", "index": 0, "ids": [5, 6, 7], "success": True,
                                              "token_texts": ["Sam", EVIL, " 9"], "token_delta": [0.0, 0.5, 0.0],
                                              "segments": [seg]}])
    _jsonl(run / "pts" / "pivots.jsonl", [{"query_id": "q1", "delta": 0.5, "p_before": 0.4, "p_after": 0.9,
                                           "before": _estimate(0.4, 16), "after": _estimate(0.9, 24),
                                           "context_text": "Sam has 3", "chosen_text": " +", "rejected_text": EVIL}])
    return run


def test_stage_table_and_pts_page(tmp_path):
    html = build_report(_run(tmp_path)).read_text()
    table = html[html.index('id="posttrain"'):html.index('id="pts"')]
    assert table.index("midtrain") < table.index("SFT") < table.index("+ DPO stage 2 (judge)")
    assert "60.0%" in table and "55.0%" in table and "mean of 3 seeds" in table and "75.0%" in table and "50.0% → 80.0%" in table
    pts = html[html.index('id="pts"'):]
    assert "rgba(30,160,60,1.00)" in pts and "outline:2px" in pts  # the pivot: green, outlined
    assert "p 0.40 (n=16) → 0.90 (n=24)" in pts and "outside_window" in pts
    assert EVIL not in html and "&lt;script&gt;" in pts


def test_stage2_only_label_when_round_one_did_not_run(tmp_path):
    html = build_report(_run(tmp_path, dpo_status="disabled")).read_text()
    assert "DPO stage 2 only" in html


def test_no_posttrain_sections_for_a_pretraining_run(tmp_path):
    run = tmp_path / "r"
    _write(run / "eval" / "stats.json", {"models": {"pretrain": {"n": 1, "accuracy": 1.0}}, "n_items": 1})
    html = build_report(run).read_text()
    assert 'id="posttrain"' not in html and 'id="pts"' not in html
