"""The report's post-training pages: a Table-9-style comparison of stages, the DPO
runs, and Pivotal Token Search (solutions coloured by Δp, and the pairs made from them).

Phi-4 report §4 / Table 9 compares SFT, DPO stage 1 (PTS), DPO stage 2 and both on
every benchmark; here the benchmark is the run's held-out eval set, and every
trained checkpoint gets a column, so the effect of each stage reads left to right.
"""

from __future__ import annotations

from phiforge.report.html import (Raw, RunView, _pipeline_rank, as_dict, esc, fmt_float, fmt_int, fmt_pct, note,
                                  register_section, section, table)

LABELS = {"pretrain": "base (pretrain)", "midtrain": "midtrain", "sft": "SFT", "dpo": "DPO stage 1 (PTS)",
          "dpo_judge": "+ DPO stage 2 (judge)"}
DPO_STAGES = ("dpo", "dpo_judge")


def stage_table(view: RunView) -> str | None:
    """Stage × accuracy, greedy and (with eval.seeds) sampled mean over seeds with a t-interval."""
    stats = view.json("eval/stats.json")
    models = {str(k): as_dict(v) for k, v in as_dict((stats or {}).get("models")).items()}
    if not any(m in models for m in ("sft", "dpo", "dpo_judge")):
        return None
    names = sorted(models, key=_pipeline_rank)
    run = as_dict(view.json("run.json"))
    stage2_only = "dpo_judge" in names and as_dict(as_dict(run.get("stages")).get("dpo")).get("status") != "done"
    labels = [("DPO stage 2 only" if n == "dpo_judge" and stage2_only else LABELS.get(n, n)) for n in names]
    rows = [[f"held-out accuracy, greedy (n={fmt_int(stats.get('n_items'))})"]
            + [Raw(_cell(models[n].get("accuracy"), models[n].get("accuracy_ci95"))) for n in names]]
    sampled = [as_dict(models[n].get("sampled")) for n in names]
    if any(sampled):
        k = max(len(s.get("seeds") or []) for s in sampled)
        t = next((s.get("temperature") for s in sampled if s), None)
        rows.append([f"held-out accuracy, t={t}, mean of {k} seeds"]
                    + [Raw(_cell(s.get("mean"), s.get("ci95"))) if s else "—" for s in sampled])
    rows.append(["extraction failures"] + [fmt_pct(models[n].get("extraction_failure_rate")) for n in names])
    intro = note("Phi-4 report Table 9 layout: one column per trained checkpoint, in pipeline order. Brackets: "
                 "95% Wilson interval over items (greedy) or 95% t-interval over sampling seeds.")
    return section("posttrain", "Post-training: accuracy by stage",
                   intro + table(["benchmark"] + labels, rows, numeric=range(1, len(names) + 1))
                   + _dpo_runs(view))


def _cell(value, ci) -> str:
    if value is None:
        return "—"
    text = esc(fmt_pct(value))
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f'<br><span class="muted">[{esc(fmt_pct(ci[0]))}, {esc(fmt_pct(ci[1]))}]</span>'
    return text


def _dpo_runs(view: RunView) -> str:
    """Pairs, steps and held-out reward accuracy before → after, per DPO stage."""
    rows = []
    for name in DPO_STAGES:
        s = view.json(f"{name}/stats.json")
        if not isinstance(s, dict):
            continue
        pairs, before, after = as_dict(s.get("pairs")), as_dict(s.get("valid_before")), as_dict(s.get("valid_after"))
        rows.append([LABELS[name], fmt_int(pairs.get("train")), fmt_int(pairs.get("valid")), fmt_int(s.get("steps")),
                     fmt_float(s.get("final_loss")),
                     f"{fmt_pct(before.get('logp_accuracy'))} → {fmt_pct(after.get('logp_accuracy'))}",
                     fmt_pct(after.get("reward_accuracy")), fmt_float(after.get("reward_margin"))])
    if not rows:
        return ""
    intro = note("Held-out pairs: 'prefers chosen' = the policy gives the chosen response the higher log-prob "
                 "(before = the starting model); reward accuracy and margin are the DPO implicit rewards "
                 "β·log(π/π_ref) after training (0 before, by definition).")
    return "<h3>DPO runs</h3>" + intro + table(
        ["stage", "train pairs", "held-out pairs", "steps", "final loss", "prefers chosen (before → after)",
         "reward accuracy", "reward margin"], rows, numeric=(1, 2, 3, 4, 6, 7))


register_section(stage_table, after="evaluation")


# -- Pivotal Token Search -----------------------------------------------------------
SOLUTIONS_SHOWN = 6
PAIRS_SHOWN = 20


def pivotal_tokens(view: RunView) -> str | None:
    """Counters, solutions with each token coloured by Δp, and the DPO pairs made from the pivots."""
    stats = view.json("pts/stats.json")
    if stats is None:
        return None if not view.exists("pts/chunks") else section("pts", "Pivotal Token Search",
                                                                  note("pts not finished"))
    search = as_dict(stats.get("search"))
    intro = note("Phi-4 report §4.3: p(success | prefix) from policy rollouts checked by the oracle; a token is "
                 "pivotal when it moves p(success) by at least p_gap. Green tokens raise p(success), red ones "
                 "lower it (colour strength = |Δp|, outlined = pivotal); hover a token for its numbers.")
    return section("pts", "Pivotal Token Search",
                   intro + _pts_counters(search) + _solutions(view) + _pts_pairs(view))


def _pts_counters(s: dict) -> str:
    cells = [["queries (searched / given)", f"{fmt_int(s.get('queries_searched'))} / {fmt_int(s.get('queries'))}"],
             ["solutions searched", fmt_int(s.get("solutions"))], ["pivotal tokens", fmt_int(s.get("pivots"))],
             ["DPO pairs", fmt_int(s.get("pairs"))], ["policy tokens generated", fmt_int(s.get("completion_tokens"))],
             ["tokens per pivotal token", fmt_float(s.get("tokens_per_pivot"), 1)],
             ["rollouts (reused credits)", f"{fmt_int(s.get('rollouts'))} ({fmt_int(s.get('reused'))})"],
             ["estimates", fmt_int(s.get("estimates"))], ["search time", f"{fmt_float(s.get('seconds'), 1)} s"]]
    cells += [[f"dropped: {k}", fmt_int(v)] for k, v in sorted(as_dict(s.get("drops")).items())]
    return table([], cells, numeric=(1,), cls="kv")


def _solutions(view: RunView) -> str:
    rows = [r for r in view.jsonl("pts/solutions.jsonl") or [] if isinstance(r, dict)]
    with_pivots = [r for r in rows if any(as_dict(g).get("kind") == "pivot" for g in r.get("segments") or [])]
    shown = (with_pivots or rows)[:SOLUTIONS_SHOWN]
    if not shown:
        return note("no solution was searched (every query fell outside the p(success) window).")
    parts = [f"<h3>Solutions ({len(shown)} of {len(rows)}; {len(with_pivots)} with pivotal tokens)</h3>"]
    for r in shown:
        verdict = "correct" if r.get("success") else "wrong"
        parts.append(f'<p class="muted">{esc(r.get("query_id"))} #{esc(r.get("index"))} ({verdict})</p>'
                     f'<div class="pts-solution">{_coloured(r)}</div>')
    return "\n".join(parts)


def _coloured(r: dict) -> str:
    texts = r.get("token_texts") or [str(t) for t in r.get("ids") or []]
    deltas = r.get("token_delta") or [0.0] * len(texts)
    pivots = {as_dict(g).get("start"): as_dict(g) for g in r.get("segments") or [] if as_dict(g).get("kind") == "pivot"}
    spans = []
    for i, (text, d) in enumerate(zip(texts, deltas)):
        d = float(d or 0.0)
        colour = (f"rgba(30,160,60,{min(1.0, abs(d) / 0.5):.2f})" if d > 0 else
                  f"rgba(210,50,40,{min(1.0, abs(d) / 0.5):.2f})") if d else "transparent"
        seg = pivots.get(i)
        title = f"Δp {d:+.2f}"
        if seg:
            b, a = as_dict(seg.get("before")), as_dict(seg.get("after"))
            title += f" pivotal: p {fmt_float(b.get('p'), 2)} (n={b.get('n')}) → {fmt_float(a.get('p'), 2)} (n={a.get('n')})"
        outline = "outline:2px solid #1d2430;" if seg else ""
        spans.append(f'<span style="background:{colour};{outline}" title="{esc(title)}">{esc(text)}</span>')
    return "".join(spans)


def _pts_pairs(view: RunView) -> str:
    pivots = [r for r in view.jsonl("pts/pivots.jsonl") or [] if isinstance(r, dict)]
    if not pivots:
        return note("no pivotal tokens found.")
    cells = []
    for p in pivots[:PAIRS_SHOWN]:
        b, a = as_dict(p.get("before")), as_dict(p.get("after"))
        cells.append([p.get("query_id"), Raw(f'<code>…{esc((p.get("context_text") or "")[-70:])}</code>'),
                      Raw(f"<code>{esc(p.get('chosen_text'))}</code>"), Raw(f"<code>{esc(p.get('rejected_text'))}</code>"),
                      f"{float(p.get('delta') or 0):+.2f}",
                      f"{fmt_float(p.get('p_before'), 2)} → {fmt_float(p.get('p_after'), 2)}",
                      f"{fmt_int(b.get('n'))} / {fmt_int(a.get('n'))}"])
    return (f"<h3>Pivotal tokens and their pairs (first {len(cells)} of {len(pivots)})</h3>"
            + table(["query", "context (prompt + prefix)", "chosen", "rejected", "Δp", "p before → after",
                     "rollouts before / after"], cells, numeric=(4,)))


register_section(pivotal_tokens, after="stage_table")
