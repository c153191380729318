"""The ``report`` stage: regenerate ``runs/<name>/report.html`` from the run folder."""

from __future__ import annotations

from phiforge.run.context import StageContext


def run_report(ctx: StageContext) -> dict:
    from phiforge.report.html import build_report

    path = build_report(ctx.run_dir)
    ctx.log(f"wrote {path}")
    return {"report": str(path)}
