"""The step contract: Filter/Map/generator steps, counters, drop reasons, templates."""

from __future__ import annotations

import pytest

from phiforge.dataflow import Filter, Map, Record, Step, StepContext
from phiforge.dataflow.step import chain
from phiforge.dataflow.testing import DropOddLength, RewritePrompt, Upper


def run(steps, records):
    dropped = []
    contexts = [StepContext(s.name, sink=lambda r, reason, step: dropped.append((r.id, reason, step)))
                for s in steps]
    counts = [[0] for _ in steps]
    out = list(chain(steps, iter(records), contexts, counts))
    return out, contexts, dropped, [c[0] for c in counts]


class Batched(Step):
    """A model-calling step pulls a batch, then yields: the generator shape allows it."""

    def run(self, records, ctx):
        batch = []
        for r in records:
            batch.append(r)
            if len(batch) == 3:
                ctx.stat("batches")
                yield from batch
                batch = []
        if batch:
            ctx.stat("batches")
            yield from batch


def test_filter_map_and_generator_steps_compose():
    records = [Record(str(i), text="x" * i) for i in range(7)]
    out, ctxs, dropped, counts = run([DropOddLength(), Upper(), Batched()], records)
    assert [r.id for r in out] == ["0", "2", "4", "6"] and out[1].text == "XX"
    assert dropped == [("1", "odd_length", "drop_odd_length"), ("3", "odd_length", "drop_odd_length"),
                       ("5", "odd_length", "drop_odd_length")]
    assert ctxs[0].drops == {"odd_length": 3} and ctxs[2].counters == {"batches": 2}
    assert counts == [4, 4, 4]


def test_filter_from_function_default_and_custom_reasons():
    def long_enough(r):
        return len(r.text) > 1

    out, ctxs, dropped, _ = run([Filter(long_enough), Filter(lambda r: r.text != "zz", reason="banned")],
                                [Record("a", text="z"), Record("b", text="zz"), Record("c", text="zzz")])
    assert [r.id for r in out] == ["c"]
    assert dropped == [("a", "long_enough", "long_enough"), ("b", "banned", "<lambda>")]
    assert Map(str.upper).name == "upper" and Upper().name == "upper"


def test_drop_reason_must_be_snake_case():
    ctx = StepContext("s")
    with pytest.raises(ValueError, match="'Too Short' must be snake_case"):
        ctx.drop(Record("a", text=""), "Too Short")


def test_templates_are_listed_with_hash_and_render_counts():
    step = RewritePrompt()
    out, ctxs, _, _ = run([step], [Record("a", text="p1"), Record("b", text="p2")])
    entry = ctxs[0].templates["rewrite_as_exercise@1"]
    assert entry["renders"] == 2 and len(entry["sha256"]) == 16 and entry["version"] == 1
    assert out[0].provenance.template_id == "rewrite_as_exercise" and "p1" in out[0].messages[0]["content"]
    _, ctxs, _, _ = run([step], [])
    assert ctxs[0].templates["rewrite_as_exercise@1"]["renders"] == 0  # listed even if unused
