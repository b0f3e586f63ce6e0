"""A benchmark's scratch directory: removed when the benchmark ends, on success or error.

The stage benchmarks write data, teacher caches, checkpoints and MLflow runs; left in /tmp, one
distillation benchmark run kept 0.6-1.8 GB, and every test run of the GPU suite's dry run added
two such directories until the disk filled.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory; MLflow tracks into `mlruns.db` inside it unless the caller set
    MLFLOW_TRACKING_URI, and the variable is unset again afterwards (it would point into a deleted
    directory)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        if "MLFLOW_TRACKING_URI" in os.environ:
            yield Path(tmp)
            return
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlruns.db"
        try:
            yield Path(tmp)
        finally:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
