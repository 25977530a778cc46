"""Errors that are the user's to fix. ``train.py`` prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input: the message names the value and the fix; no traceback is shown."""


class ConfigError(UserError, ValueError):
    """A config key has a wrong type or an impossible value."""


class RunDirRefused(ConfigError):
    """A job may not use the run directory it was given (it holds another run's saved work, or
    another job holds it): nothing is written there, not even the refusal."""


class DataError(UserError):
    """A data set is missing, empty or unreadable."""


class NonFiniteEmbeddingError(UserError, FloatingPointError):
    """NaN or inf embeddings reached the loss: the run diverged."""


class NoSpaceForCheckpoint(UserError, OSError):
    """A checkpoint could not be written for lack of space; the previous one is kept whole."""


class JobFailed(UserError):
    """A job of a ``-m`` sweep failed: recorded in its run directory; the sweep goes on."""
