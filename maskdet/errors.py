"""Errors that end a run with a message for the user instead of a traceback.

Entry points catch ``MaskdetError`` and print its message: each one names the file or config key at
fault and what to do about it.
"""


class MaskdetError(Exception):
    """Base class: the message is complete and written for the user."""


class DataError(MaskdetError):
    """The dataset on disk (or its description in config) cannot be used as it is."""


class ConfigError(MaskdetError):
    """A config value or key is wrong."""


class WeightsUnavailableError(MaskdetError):
    """Pretrained weights were asked for but cannot be downloaded or found."""


def exit_on_error(function, *args, on_error=None):
    """Run an entry point's work; a ``MaskdetError`` ends the process with its message and status 1,
    not a traceback (anything else is a bug and keeps its traceback). ``on_error(err)`` runs first for
    either kind, for the entry point's own tidying (train removes a run folder that holds no result)."""
    import sys

    try:
        return function(*args)
    except Exception as err:
        if on_error is not None:
            on_error(err)
        user_error = err if isinstance(err, MaskdetError) else err.__cause__  # Hydra's instantiate wraps them
        if not isinstance(user_error, MaskdetError):
            raise
        print(f"\nmaskdet: {user_error}", file=sys.stderr)
        sys.exit(1)
