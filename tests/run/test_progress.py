"""Progress bars driven by backends' progress(done, total) callbacks."""

import io

from phiforge.run.progress import ProgressBar


def test_bar_counts_to_total_and_restarts_per_batch():
    out = io.StringIO()
    bar = ProgressBar("[synth] teacher", file=out, log_interval=0)
    for done in range(1, 11):
        bar(done, 10)
    for done in range(1, 21):
        bar(done, 20)
    text = out.getvalue()
    assert "[synth] teacher" in text and "10/10" in text and "20/20" in text


def test_small_batches_stay_quiet():
    out = io.StringIO()
    bar = ProgressBar("x", file=out, min_total=8)
    bar(1, 2)
    bar(2, 2)
    assert out.getvalue() == ""
