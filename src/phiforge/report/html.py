"""One self-contained ``report.html`` per run: stages, data mixture, loss curves, evals, config.

Why one file with nothing external: a run folder is copied around (scp, CI
artifacts, a laptop without network), so the report inlines its CSS and embeds
every plot as a base64 PNG; it opens anywhere, offline, and never goes stale
against files that moved.

The page is a list of section builders, ``SECTIONS``, each a function
``RunView -> str | None`` (HTML, or None to leave the section out). Later stages
(synthetic data, SFT, DPO, ...) add theirs with ``register_section`` instead of
editing this file. ``RunView`` reads the run folder lazily and forgivingly: a
missing file is ``None`` (the section says "not run"), a malformed one is ``None``
plus a warning box naming the file, so a half-finished or crashed run still gets
a report. A section that raises is replaced by a warning box for the same reason.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import tempfile
import time
from html import escape
from pathlib import Path
from typing import Any, Callable, Iterable

SectionFn = Callable[["RunView"], "str | None"]

DEFAULT_ORDER = ("data", "curate", "synth", "tokenizer", "pretrain", "midtrain", "refusal", "sft", "pts", "dpo", "judge", "dpo_judge",
                 "eval", "report")
TRAINING_STAGES = ["pretrain", "midtrain"]  # stages with metrics.jsonl / mixture.json
POSTTRAIN_STAGES = ["sft", "dpo", "dpo_judge"]  # metrics.jsonl, shown only when they ran
EXAMPLES_PER_MODEL = 5
_SAFE_NAME = re.compile(r"^[\w.-]+$")


# -- reading the run folder ------------------------------------------------
class RunView:
    """Cached, crash-proof access to a run folder's JSON / JSONL files."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.warnings: list[str] = []
        self._cache: dict[tuple[str, str], Any] = {}

    def path(self, rel: str) -> Path:
        return self.run_dir / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def json(self, rel: str) -> Any | None:
        """The parsed file, or None if it is missing or malformed (then a warning is recorded)."""
        key = ("json", rel)
        if key not in self._cache:
            text = self._read(rel)
            value = None
            if text is not None:
                try:
                    value = json.loads(text)
                except ValueError as e:
                    self.warn(f"{rel}: malformed JSON ({e}); shown as not available")
            self._cache[key] = value
        return self._cache[key]

    def jsonl(self, rel: str) -> list[Any] | None:
        """The parsed rows, or None if missing; malformed lines are skipped with one warning."""
        key = ("jsonl", rel)
        if key not in self._cache:
            text = self._read(rel)
            self._cache[key] = None if text is None else self._parse_lines(rel, text)
        return self._cache[key]

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    @property
    def name(self) -> str:
        run = self.json("run.json")
        return str(run["name"]) if isinstance(run, dict) and run.get("name") else self.run_dir.name

    def _read(self, rel: str) -> str | None:
        path = self.path(rel)
        if not path.is_file():
            return None
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.warn(f"{rel}: unreadable ({e}); shown as not available")
            return None

    def _parse_lines(self, rel: str, text: str) -> list[Any]:
        rows, bad = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                bad.append(lineno)
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
            self.warn(f"{rel}: skipped {len(bad)} malformed line(s) (line {shown})")
        return rows


# -- the section registry ---------------------------------------------------
SECTIONS: list[SectionFn] = []


def register_section(fn: SectionFn, after: str | None = None) -> SectionFn:
    """Add ``fn`` to the page after the section named ``after`` (default: at the end).

    Sections are named by their function's ``__name__``; registering a name that is
    already there replaces it in place, so re-importing a plugin module is harmless.
    Returns ``fn``, so it also works as a plain decorator.
    """
    names = [s.__name__ for s in SECTIONS]
    if fn.__name__ in names:
        SECTIONS[names.index(fn.__name__)] = fn
        return fn
    if after is None:
        SECTIONS.append(fn)
    elif after in names:
        SECTIONS.insert(names.index(after) + 1, fn)
    else:
        raise ValueError(f"register_section: no section named {after!r}; sections are {names}")
    return fn


def build_report(run_dir: Path, out: Path | None = None) -> Path:
    """Render every registered section of ``run_dir`` into one HTML file (written atomically)."""
    view = RunView(run_dir)
    out = Path(out) if out is not None else view.run_dir / "report.html"
    parts = [(fn.__name__, _render_section(fn, view)) for fn in SECTIONS]
    body = [html for _, html in parts if html]
    at = 1 if parts and parts[0][0] == "header" and parts[0][1] else 0
    if view.warnings:
        body.insert(at, _warnings_box(view.warnings))
    _write_atomic(out, _page(view.name, "\n".join(body)))
    return out


def _render_section(fn: SectionFn, view: RunView) -> str | None:
    """One section's HTML; an exception becomes a warning box so the rest of the report survives."""
    try:
        return fn(view)
    except Exception as e:  # noqa: BLE001 - a broken section must not take the report down
        return (f'<section><div class="warn">Section <code>{esc(fn.__name__)}</code> could not be '
                f"rendered: {esc(type(e).__name__)}: {esc(e)}</div></section>")


def _write_atomic(out: Path, text: str) -> None:
    """Write via a temp file + ``os.replace`` so a reader never sees half a report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- HTML helpers -----------------------------------------------------------
def esc(value: Any) -> str:
    """HTML-escape anything (run names, sources, model output can all contain markup)."""
    return escape(str(value), quote=True)


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def note(text: str) -> str:
    return f'<p class="muted">{esc(text)}</p>'


def not_run(what: str) -> str:
    return f'<p class="muted"><span class="badge status-not-run">not run</span> {esc(what)}</p>'


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], numeric: Iterable[int] = (),
          foot: Iterable[Any] | None = None, cls: str = "") -> str:
    """A bordered table; cells are escaped unless wrapped in ``Raw``; ``numeric`` columns align right."""
    num = set(numeric)

    def tr(cells: Iterable[Any], tag: str) -> str:
        out = []
        for i, c in enumerate(cells):
            klass = ' class="num"' if i in num and tag == "td" else ""
            out.append(f"<{tag}{klass}>{c if isinstance(c, Raw) else esc(c)}</{tag}>")
        return "<tr>" + "".join(out) + "</tr>"

    headers = list(headers)
    thead = f"<thead>{tr(headers, 'th')}</thead>" if headers else ""
    body = "\n".join(tr(r, "td") for r in rows)
    tfoot = f"<tfoot>{tr(foot, 'td')}</tfoot>" if foot is not None else ""
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<table{klass}>{thead}<tbody>\n{body}\n</tbody>{tfoot}</table>'


class Raw(str):
    """Marks a table cell as already-safe HTML (e.g. a badge built from escaped parts)."""


def _warnings_box(warnings: list[str]) -> str:
    items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    return f'<div class="warn"><strong>Warnings</strong><ul>{items}</ul></div>'


# -- number formatting (None / NaN / wrong type -> an em dash, never a crash) --
def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        return None
    return float(x)


def fmt_int(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{int(round(v)):,}"


def fmt_float(x: Any, digits: int = 4) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.{digits}f}"


def fmt_pct(x: Any, digits: int = 1) -> str:
    v = _num(x)
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def fmt_seconds(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "—"
    if v < 60:
        return f"{v:.1f} s"
    minutes, secs = divmod(int(round(v)), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m {secs:02d}s" if minutes >= 60 else f"{minutes}m {secs:02d}s"


def fmt_mb(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:,.0f} MB"


def as_dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def badge(status: Any) -> Raw:
    text = str(status) if status is not None else "not run"
    klass = re.sub(r"[^a-z0-9-]", "", text.lower().replace(" ", "-")) or "unknown"
    return Raw(f'<span class="badge status-{klass}">{esc(text)}</span>')


# -- sections ---------------------------------------------------------------
def header(view: RunView) -> str:
    """Run name, when the page was made and by which phiforge (reports outlive code versions)."""
    from phiforge import __version__

    when = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return (f"<header><h1>phiforge run <code>{esc(view.name)}</code></h1>\n"
            f'<p class="muted">generated {esc(when)} · phiforge {esc(__version__)} · '
            f"<code>{esc(view.run_dir.resolve())}</code></p></header>")


def stages(view: RunView) -> str:
    """Status, wall time and peak memory per stage: where the run's time and RAM went."""
    run = as_dict(view.json("run.json"))
    info = as_dict(run.get("stages"))
    rows, walls, peaks = [], [], []
    for name in _stage_order(run, info):
        status, wall, peak = _stage_numbers(view, name, as_dict(info.get(name)))
        rows.append([name, badge(status), fmt_seconds(wall), fmt_mb(peak)])
        walls += [w for w in [_num(wall)] if w is not None]
        peaks += [p for p in [_num(peak)] if p is not None]
    foot = ["total", "", fmt_seconds(sum(walls)) if walls else "—",
            f"max {fmt_mb(max(peaks))}" if peaks else "—"]
    intro = "" if run else note("run.json not found; statuses inferred from each stage's stats.json.")
    return section("stages", "Stages", intro + table(["stage", "status", "wall time", "peak RSS"],
                                                     rows, numeric=(2, 3), foot=foot))


def _stage_order(run: dict, info: dict) -> list[str]:
    order = run.get("order")
    names = [str(s) for s in order] if isinstance(order, list) else list(DEFAULT_ORDER)
    return names + [s for s in info if s not in names]


def _stage_numbers(view: RunView, name: str, entry: dict) -> tuple[Any, Any, Any]:
    """(status, wall_s, peak_rss_mb) from run.json, falling back to ``<stage>/stats.json``."""
    stats = as_dict(view.json(f"{name}/stats.json")) if _SAFE_NAME.match(name) else {}
    status = entry.get("status") or ("done" if stats else "not run")
    if name == "report" and status == "running":
        status = "writing"  # this very page is being written by the report stage
    wall = entry.get("wall_s") if entry.get("wall_s") is not None else stats.get("wall_s")
    peak = entry.get("peak_rss_mb") if entry.get("peak_rss_mb") is not None else stats.get("peak_rss_mb")
    return status, wall, peak


def data_mixture(view: RunView) -> str:
    """Per-source fractions, unique tokens and epochs, as in the Phi-4 report's Table 5."""
    parts = [note("epochs = planned tokens / unique tokens (a source repeated 4x reads 4.00).")]
    for stage in TRAINING_STAGES:
        mix = view.json(f"{stage}/mixture.json")
        body = _mixture_table(mix) if isinstance(mix, dict) else not_run(f"no {stage}/mixture.json")
        parts.append(f"<h3>{esc(stage)}</h3>\n{body}")
    return section("mixture", "Data mixture", "\n".join(parts))


def _mixture_table(mix: dict) -> str:
    rows = [r for r in mix.get("rows") or [] if isinstance(r, dict)]
    cells = [[r.get("source", "?"), fmt_pct(r.get("fraction")), fmt_int(r.get("unique_tokens")),
              fmt_int(r.get("planned_tokens")), fmt_float(r.get("epochs"), 2)] for r in rows]
    unique = sum(_num(r.get("unique_tokens")) or 0 for r in rows)
    planned = sum(_num(r.get("planned_tokens")) or 0 for r in rows)
    frac = sum(_num(r.get("fraction")) or 0 for r in rows)
    foot = ["total", fmt_pct(frac), fmt_int(unique), fmt_int(planned),
            fmt_float(planned / unique, 2) if unique else "—"]
    caption = note(f"seq_len {fmt_int(mix.get('seq_len'))} · total tokens {fmt_int(mix.get('total_tokens'))}")
    return caption + table(["source", "fraction", "unique tokens", "planned tokens", "epochs"], cells,
                           numeric=(1, 2, 3, 4), foot=foot)


def loss_curves(view: RunView) -> str:
    """Train loss per step and held-out loss per source, one figure per training stage."""
    parts = []
    for stage in TRAINING_STAGES + [s for s in POSTTRAIN_STAGES if view.exists(f"{s}/metrics.jsonl")]:
        rows = view.jsonl(f"{stage}/metrics.jsonl")
        train, evals = _loss_series(rows or [])
        if train or evals:
            body = _img(_loss_png(stage, train, evals), f"{stage} loss curves") + _loss_summary(rows, train, evals)
        else:
            body = not_run(f"no {stage}/metrics.jsonl" if rows is None else f"{stage}/metrics.jsonl has no losses")
        parts.append(f"<h3>{esc(stage)}</h3>\n{body}")
    return section("loss", "Loss curves", "\n".join(parts))


def _loss_series(rows: list) -> tuple[list[tuple[float, float]], dict[str, list[tuple[float, float]]]]:
    """(step, train loss) points and {source: [(step, val loss)]}, ignoring rows of the wrong shape."""
    train, evals = [], {}
    for r in rows:
        if not isinstance(r, dict) or _num(r.get("step")) is None:
            continue
        if r.get("kind") == "train" and _num(r.get("loss")) is not None:
            train.append((r["step"], r["loss"]))
        elif r.get("kind") == "eval":
            for src, v in as_dict(r.get("val_loss")).items():
                if _num(v) is not None:
                    evals.setdefault(str(src), []).append((r["step"], v))
    return train, evals


def _loss_png(stage: str, train: list, evals: dict) -> bytes:
    """Render with matplotlib's object API: no pyplot, no global backend switch, no leaked figures."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter, MaxNLocator

    fig = Figure(figsize=(8, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), lw=1.0, color="#555555", alpha=0.85, label="train")
    for src, pts in sorted(evals.items()):
        ax.plot(*zip(*pts), marker="o", ms=4, lw=1.2, label=f"val: {src}")
    values = [v for _, v in train] + [v for pts in evals.values() for _, v in pts]
    if values and min(values) > 0:
        ax.set_yscale("log")
        for axis_set in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_set(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))  # "4", not "4×10⁰"
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", title=f"{stage}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _loss_summary(rows: list | None, train: list, evals: dict) -> str:
    """Final numbers under the plot, so the curve's end can be read exactly."""
    last = next((r for r in reversed(rows or []) if isinstance(r, dict) and r.get("kind") == "train"), {})
    speeds = sorted(v for r in rows or [] if isinstance(r, dict) and r.get("kind") == "train"
                    for v in [_num(r.get("tokens_per_s"))] if v is not None)
    cells = [["steps", fmt_int(train[-1][0] if train else None)],
             ["final train loss", fmt_float(train[-1][1] if train else None)],
             ["tokens seen", fmt_int(last.get("tokens"))],
             ["median tokens/s", fmt_int(speeds[len(speeds) // 2] if speeds else None)],
             ["train time", fmt_seconds(last.get("elapsed_s"))]]
    cells += [[f"final val loss: {src}", fmt_float(pts[-1][1])] for src, pts in sorted(evals.items())]
    return table([], cells, numeric=(1,), cls="kv")


def evaluation(view: RunView) -> str:
    """Accuracy per model with its CI, next to trivial baselines, plus a few raw predictions."""
    stats = view.json("eval/stats.json")
    if not isinstance(stats, dict):
        return section("evaluation", "Evaluation", not_run("no eval/stats.json"))
    models = {str(k): as_dict(v) for k, v in as_dict(stats.get("models")).items()}
    models = dict(sorted(models.items(), key=lambda kv: _pipeline_rank(kv[0])))
    steps = sorted({str(k) for m in models.values() for k in as_dict(m.get("accuracy_by_steps"))}, key=_step_key)
    headers = ["model", "n", "accuracy", "95% CI", "extraction failures"] + [f"{k}-step acc." for k in steps]
    rows = [[name, fmt_int(m.get("n")), fmt_pct(m.get("accuracy")), _ci(m.get("accuracy_ci95")),
             fmt_pct(m.get("extraction_failure_rate"))]
            + [fmt_pct(as_dict(m.get("accuracy_by_steps")).get(k)) for k in steps] for name, m in models.items()]
    rows += [[Raw(f"<em>baseline: {esc(name)}</em>"), "—", fmt_pct(acc), "—", "—"] + ["—"] * len(steps)
             for name, acc in as_dict(stats.get("baselines")).items()]
    body = table(headers, rows, numeric=range(1, len(headers))) if rows else note("eval/stats.json lists no models.")
    examples = "\n".join(_examples(view, name) for name in models)
    return section("evaluation", "Evaluation", body + "\n" + examples)


def _step_key(k: str) -> tuple[float, str]:
    return (int(k) if k.isdigit() else math.inf, k)


def _ci(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(x) is not None for x in ci):
        return f"[{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]"
    return "—"


def _examples(view: RunView, model: str) -> str:
    """The first predictions in file order (deterministic, so two reports of a run agree)."""
    title = f"<h3>Example predictions: {esc(model)}</h3>\n"
    if not _SAFE_NAME.match(model):
        return title + note("model name is not a safe file name; predictions not shown.")
    rows = view.jsonl(f"eval/predictions/{model}.jsonl")
    if rows is None:
        return title + not_run(f"no eval/predictions/{model}.jsonl")
    picked = [r for r in rows if isinstance(r, dict)][:EXAMPLES_PER_MODEL]
    cells = [[_or_dash(r.get("id")), Raw(f'<div class="text">{esc(r.get("question", ""))}</div>'),
              _or_dash(r.get("answer")), _or_dash(r.get("prediction")),
              Raw(f'<pre class="completion">{esc(r.get("completion", ""))}</pre>'), _correct(r.get("correct"))]
             for r in picked]
    intro = note(f"first {len(picked)} of {len(rows)} predictions")
    return title + intro + table(["id", "question", "answer", "prediction", "completion", "correct?"], cells,
                                 cls="examples")


def _pipeline_rank(name: str) -> tuple[int, str]:
    """Order checkpoints as the pipeline made them (pretrain before midtrain), others after."""
    order = list(DEFAULT_ORDER)
    return (order.index(name) if name in order else len(order), name)


def _or_dash(x: Any) -> Any:
    return "—" if x is None else x


def _correct(flag: Any) -> Raw:
    if isinstance(flag, int) and not isinstance(flag, bool) and flag in (0, 1):
        flag = bool(flag)  # the eval stage writes 0/1
    if flag is True:
        return Raw('<span class="badge status-done">✓ yes</span>')
    if flag is False:
        return Raw('<span class="badge status-failed">✗ no</span>')
    return Raw("—")


def resolved_config(view: RunView) -> str:
    """The exact resolved recipe, so every number above can be traced to its setting."""
    cfg = view.json("config.resolved.json")
    if cfg is None:
        return section("config", "Resolved config", not_run("no config.resolved.json"))
    text = json.dumps(cfg, indent=2, ensure_ascii=False, default=str)
    return section("config", "Resolved config", f'<pre class="config">{esc(text)}</pre>')


for _fn in (header, stages, data_mixture, loss_curves, evaluation, resolved_config):
    register_section(_fn)
del _fn


# -- page -------------------------------------------------------------------
CSS = """
:root { --fg:#1d2430; --muted:#5f6b7a; --line:#d5dbe3; --bg:#fff; --head:#f3f5f8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.6em; margin: 0 0 4px; } h2 { font-size: 1.25em; margin: 36px 0 10px;
     padding-bottom: 4px; border-bottom: 2px solid var(--line); } h3 { font-size: 1.05em; margin: 20px 0 6px; }
code, pre, td.num { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.92em; }
.muted { color: var(--muted); margin: 4px 0 8px; }
table { border-collapse: collapse; margin: 6px 0 14px; }
th, td { border: 1px solid var(--line); padding: 4px 10px; vertical-align: top; text-align: left; }
th { background: var(--head); font-weight: 600; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tfoot td { font-weight: 600; background: var(--head); }
table.kv td:first-child { color: var(--muted); }
table.examples { width: 100%; table-layout: fixed; }
table.examples th:nth-child(1) { width: 7%; } table.examples th:nth-child(2) { width: 30%; }
table.examples th:nth-child(3), table.examples th:nth-child(4) { width: 9%; }
table.examples th:nth-child(6) { width: 8%; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; }
pre { background: #f7f8fa; border: 1px solid var(--line); border-radius: 4px; padding: 8px 10px; margin: 0;
      white-space: pre-wrap; overflow-wrap: anywhere; }
pre.completion { max-height: 14em; overflow: auto; }
pre.config { max-height: 40em; overflow: auto; }
img.plot { max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 0.85em; background: #e8ebef; }
.status-done { background: #dcf3e3; color: #176c34; } .status-failed { background: #fbe0e0; color: #a11d1d; }
.status-skipped { background: #eef0f3; color: #5f6b7a; } .status-writing { background: #e3f4e8; color: #1e6b3a; } .status-pending, .status-running { background: #fff3d6; color: #8a5a00; }
.status-not-run { background: #eef0f3; color: #8792a2; }
.warn { background: #fff6e0; border: 1px solid #f0c36d; border-left: 5px solid #e0a020; border-radius: 4px;
        padding: 8px 12px; margin: 14px 0; }
.warn ul { margin: 4px 0 0; padding-left: 20px; }
"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>phiforge report: {esc(title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")

# Pages of later stages register themselves after the core sections.
from phiforge.report import synth as _synth  # noqa: E402,F401
from phiforge.report import posttrain as _posttrain  # noqa: E402,F401
from phiforge.report import benchmarks as _benchmarks  # noqa: E402,F401
from phiforge.report import curate as _curate  # noqa: E402,F401
