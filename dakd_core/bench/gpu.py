"""GPU utilisation sampled in the background while a block runs (nvidia-ml-py, optional).

NVML's utilisation is the share of its last sample period (1/6 s to 1 s, by device) in which a
kernel ran: a training loop starved by its data loader or by host-side work reads well below 100 %.
Without nvidia-ml-py or a GPU the sampler records nothing and says why (`unavailable`).
"""

from __future__ import annotations

import contextlib
import statistics
import threading
from typing import Callable, Iterator


def nvml_reader(index: int = 0) -> tuple[Callable[[], float] | None, str]:
    """(a function returning the GPU's utilisation in %, "") or (None, why not)."""
    try:
        import pynvml  # the nvidia-ml-py package
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as e:
        return None, f"NVML: {e}"
    return (lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)), ""


class UtilisationSampler:
    """`with sampler.probe("cached"): ...` records readings every `period` seconds under that
    kind; `mean(kind)` is their average (None when nothing was recorded)."""

    def __init__(self, read: Callable[[], float] | None, period: float = 0.1, unavailable: str = ""):
        self.read, self.period, self.unavailable = read, period, unavailable
        self.samples: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def probe(self, kind: str) -> Iterator[None]:
        readings = self.samples.setdefault(kind, [])
        if self.read is None:
            yield
            return
        stop = threading.Event()

        def poll() -> None:
            while True:
                readings.append(self.read())
                if stop.wait(self.period):
                    return

        thread = threading.Thread(target=poll, name=f"gpu-util-{kind}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def mean(self, kind: str) -> float | None:
        readings = self.samples.get(kind)
        return statistics.fmean(readings) if readings else None
