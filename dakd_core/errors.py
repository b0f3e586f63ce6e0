"""One exception type for every user-facing failure.

Anything a user can cause (bad file, bad config value, missing object) raises DakdError with a
message naming the file, URI or config field. The CLI prints it and exits with status 2, without a
traceback; anything else is a bug and keeps its traceback.
"""


class DakdError(Exception):
    """A failure caused by input, configuration or environment, explained in the message."""


class ConfigError(DakdError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class StoreError(DakdError):
    """An object-store operation failed (missing object, bad key, unreachable endpoint)."""


class DataError(DakdError):
    """A dataset file is unreadable, mislaid or inconsistent."""


class TrainingError(DakdError):
    """Training cannot continue (NaN/inf loss, incompatible checkpoint)."""


class Preempted(DakdError):
    """A stop signal (SIGTERM from Kubernetes, SIGINT from a terminal) ended a stage early, after a
    resumable checkpoint. The CLI exits with 128 + the signal number, the status a process killed
    by that signal reports, so schedulers treat it as the interruption it is (and retry it)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class TrackingError(DakdError):
    """The MLflow tracking server did not answer within its deadline (DAKD_MLFLOW_DEADLINE_S)."""


class SetupError(DakdError):
    """A pipeline task's environment lacks what the pipeline needs: MLFLOW_TRACKING_URI, the
    pipeline's MLflow parent run at that URI, a writable MLflow artifact store or object store
    (dakd_core/orchestration/preflight.py). Fixed in the platform's secrets and config, not in the
    task's inputs, so it is never recorded as a deterministic failure: a retry after the fix runs."""
