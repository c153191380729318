"""The self-contained ``report.html`` of a run (see ``phiforge.report.html``)."""

from phiforge.report.html import SECTIONS, RunView, build_report, register_section

__all__ = ["SECTIONS", "RunView", "build_report", "register_section"]
