"""Progress of long steps (generating the embedded dataset, decoding the cache, backbone features)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("maskdet.data")


@contextmanager
def progress(what: str, total: int) -> Iterator[Callable[[int], None]]:
    """Report a long build: a rich progress bar when stderr is a terminal, otherwise a log line (logger
    ``maskdet.data``) at about every 10 %. Yields ``advance(n)``, to call as items are done."""
    start, done, reported = time.perf_counter(), 0, 0
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n: bar.advance(task, n)
    else:
        log.info("%s ...", what)

        def advance(n: int) -> None:
            nonlocal done, reported
            done += n
            if done * 10 // max(total, 1) > reported and done < total:
                reported = done * 10 // max(total, 1)
                log.info("%s: %d %% (%s of %s)", what, 100 * done // total, f"{done:,}", f"{total:,}")

        yield advance
    log.info("%s: done in %.1f s", what, time.perf_counter() - start)
