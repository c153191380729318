"""Progress bars for long model batches, as a ``progress(done, total)`` callback.

Backends report progress through a plain callback so they stay free of any UI;
stages turn it into a tqdm bar here. On a terminal the bar redraws in place; in
logs (CI, ``nohup``) it prints a line at most every ``log_interval`` seconds, so
a 10-minute generation leaves a few dozen lines, not thousands. Batches below
``min_total`` items show nothing.
"""

from __future__ import annotations

import sys
from typing import Callable

Progress = Callable[[int, int], None]


class ProgressBar:
    """A ``progress(done, total)`` callback that drives one tqdm bar per batch.

    A new bar starts whenever ``done`` goes back to a smaller value or ``total``
    changes (the next ``sample`` call), and closes when ``done == total``.
    """

    def __init__(self, desc: str, unit: str = "req", min_total: int = 8, log_interval: float = 10.0,
                 file=None):
        self.desc, self.unit, self.min_total = desc, unit, min_total
        self.file = file or sys.stderr
        self.interactive = bool(getattr(self.file, "isatty", lambda: False)())
        self.log_interval = 0.1 if self.interactive else log_interval
        self._bar, self._total, self._done = None, 0, 0

    def __call__(self, done: int, total: int) -> None:
        if total < self.min_total:
            return
        if self._bar is None or total != self._total or done < self._done:
            self._open(total)
        self._bar.update(done - self._done)
        self._done = done
        if done >= total:
            self.close()

    def _open(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.close()
        self._bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=self.file, leave=True,
                         mininterval=self.log_interval, maxinterval=max(self.log_interval, 10.0),
                         dynamic_ncols=self.interactive, ascii=not self.interactive)
        self._total, self._done = total, 0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
