"""Progress of long steps (generating the embedded dataset, decoding the cache, backbone features), for a
terminal (live bars) and for a console that is not one (CI, ``nohup``, SLURM, notebooks, ``make train >
log``): there, plain lines reach the console, so no minute of a long run passes in silence. Training's
own progress is ``maskdet.epoch_progress`` (it needs Lightning, which this module must not import)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from maskdet.console import SUMMARY

log = logging.getLogger("maskdet.data")
console = logging.getLogger(SUMMARY)  # the lines the console shows (maskdet.console)


@contextmanager
def progress(what: str, total: int, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """Report a long build: a rich progress bar when stderr is a terminal, otherwise a console line at the
    start, about every 10 % and at the end. Yields ``advance(n)``, to call as items are done. ``quiet``: work
    too short to report (one batch, one file): nothing is shown."""
    start, done, reported = time.perf_counter(), 0, 0
    if quiet:
        yield lambda n: None
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n: bar.advance(task, n)
    else:
        console.info("%s ...", what)

        def advance(n: int) -> None:
            nonlocal done, reported
            done += n
            if done * 10 // max(total, 1) > reported and done < total:
                reported = done * 10 // max(total, 1)
                console.info("%s: %d %% (%s of %s, %s)", what, 100 * done // total, f"{done:,}", f"{total:,}",
                             duration(time.perf_counter() - start))

        yield advance
    (log if sys.stderr.isatty() else console).info("%s: done in %.1f s", what, time.perf_counter() - start)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

