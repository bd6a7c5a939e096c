"""Errors the workbench raises for bad input: each message names the fix."""


class WorkbenchError(Exception):
    """Base class: a user-facing error whose message says what to do (CLI exit code 2)."""


class UnknownModelError(WorkbenchError, KeyError):
    """A model name that is neither registered nor a local folder."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModelUnavailableError(WorkbenchError):
    """Weights are not cached and cannot be fetched (e.g. no network)."""


class InputError(WorkbenchError, ValueError):
    """Empty prompt, context over the model's limit, head index out of range, bad option."""


class FolderInUseError(WorkbenchError):
    """A result folder that another process is writing (its lock is held); the message names that process."""


class DamagedResultsError(WorkbenchError):
    """A result folder's manifest cannot be read; the message names the file and what to do."""


class ExecutorError(WorkbenchError):
    """An executor cannot run: Ray missing or unreachable, too few resources for the workers asked for, or a worker
    that died more often than it may be restarted; the message says what to install, which address failed, or
    that the results written so far are kept (resume)."""


class WorkbenchWarning(UserWarning):
    """Something the user should know that does not stop the work (e.g. a damaged part set aside and recomputed)."""


class CaptureMemoryError(WorkbenchError, MemoryError):
    """An exact capture would not fit in memory; the message gives the bytes and the alternative."""


class DamagedModelError(ModelUnavailableError):
    """A model's files are damaged (wrong size or hash, missing, unreadable, non-finite logits); the message says
    how to replace them (`workbench fetch NAME --force` for the cache)."""


class UnsupportedModelError(WorkbenchError):
    """A model the workbench cannot hook: its attention does not go through transformers' AttentionInterface,
    or a part an analysis needs (e.g. the output projection for direct logits) could not be identified."""
