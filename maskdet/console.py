"""What reaches the console: a few summary lines per run, maskdet's warnings, and errors.

Full reports (data report, classification report, bias report, Lightning's model summary, third-party
warnings) go to the run's ``train.log`` (or ``<task>.log``) only; ``verbose=true`` prints everything.
Entry points log their summary lines to ``SUMMARY`` (``summary(...)``).
"""

from __future__ import annotations

import logging

SUMMARY = "maskdet.summary"


def summary(message: str, *args) -> None:
    """A line for the console and the log file: what the run did and where its outputs are."""
    logging.getLogger(SUMMARY).info(message, *args)


class ConsoleFilter(logging.Filter):
    """Lets through summary lines, maskdet's own warnings and every error (all records with ``verbose``)."""

    def __init__(self, verbose: bool = False):
        super().__init__()
        self.verbose = bool(verbose)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.ERROR or record.name == SUMMARY:
            return True
        return record.levelno >= logging.WARNING and record.name.startswith("maskdet")


def route_third_party_output() -> None:
    """Send Lightning's messages and Python warnings through the logging set up by Hydra.

    Lightning attaches its own stderr handler to ``lightning.pytorch`` when it is imported before logging is
    configured (always, here), which would bypass both the console filter and the log file.
    """
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger: in the log file, off the console
