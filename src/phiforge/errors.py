"""The exception hierarchy users see.

Every error a user can cause (bad recipe, bad data, wrong checkpoint) is a
``PhiforgeError`` whose message says *where* the problem is (file, line, key)
and *what to change*. The CLI prints these without a traceback.
"""


class PhiforgeError(Exception):
    """Base class for errors caused by user input, printed without a traceback."""


class ConfigError(PhiforgeError):
    """A recipe key is unknown, has the wrong type or a bad value."""


class DataError(PhiforgeError):
    """A data file is missing or malformed (message names file and line)."""


class CheckpointError(PhiforgeError):
    """A checkpoint folder is missing, incomplete, or from another architecture."""


class StageError(PhiforgeError):
    """A stage cannot run, e.g. its inputs from an earlier stage are missing."""


class BackendError(PhiforgeError):
    """A model server failed (after retries) or cannot do what was asked; names the endpoint."""
