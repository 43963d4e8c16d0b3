"""User-facing errors, in one light module so the CLI can catch them without importing torch.

Each is a ``ValueError``/``RuntimeError`` subclass raised with a one-line message that says
what is wrong and what to do; the CLI prints it and exits with status 1.
"""


class DataError(ValueError):
    """A dataset file that cannot be used at all (missing, no valid row, wrong columns)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, or made for other settings."""


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, bad run directory)."""


class DownloadError(RuntimeError):
    """A dataset file could not be fetched or failed verification; nothing was left behind."""


class CompositionError(ValueError):
    """A formula or species list the model cannot be asked about."""


class DependencyError(ValueError):
    """An optional library a requested feature needs is not installed (the message says which)."""
