"""The errors a user can cause. The CLI turns each into one line on stderr and its exit code;
anything else is a bug and keeps its traceback."""


class AdaptiveLMError(Exception):
    """Bad input the user can fix: a missing file, a corrupt checkpoint, an empty corpus."""
    exit_code = 1


class UsageError(AdaptiveLMError):
    """A wrong command line: unknown recipe, unknown key, a value of the wrong type."""
    exit_code = 2


class CheckpointError(AdaptiveLMError):
    """A checkpoint that is missing, incomplete or corrupt."""


class DataError(AdaptiveLMError):
    """A corpus or data folder that is missing or empty."""
