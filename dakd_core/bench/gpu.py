"""GPU utilisation sampled in the background while a block runs (nvidia-ml-py, optional).

NVML's utilisation is the share of its last sample period (1/6 s to 1 s, by device) in which a
kernel ran: a training loop starved by its data loader or by host-side work reads well below 100 %.
Without nvidia-ml-py or a GPU the sampler records nothing and says why (`unavailable`).
A mean over less than `MIN_WINDOW_S` of probing is not reported: a few readings of a 1/6-1 s
period say more about when the sample fell than about the loop.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from typing import Callable, Iterator

MIN_WINDOW_S = 5.0


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
    kind; `mean(kind)` is their average (None when nothing was recorded), `window(kind)` the
    seconds probed under it (all its probes together)."""

    def __init__(self, read: Callable[[], float] | None, period: float = 0.1, unavailable: str = "",
                 clock: Callable[[], float] = time.perf_counter):
        self.read, self.period, self.unavailable, self.clock = read, period, unavailable, clock
        self.samples: dict[str, list[float]] = {}
        self.windows: dict[str, float] = {}

    @contextlib.contextmanager
    def probe(self, kind: str) -> Iterator[None]:
        readings = self.samples.setdefault(kind, [])
        if self.read is None:
            yield
            return
        started = self.clock()
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
            self.windows[kind] = self.windows.get(kind, 0.0) + self.clock() - started

    def mean(self, kind: str) -> float | None:
        readings = self.samples.get(kind)
        return statistics.fmean(readings) if readings else None

    def window(self, kind: str) -> float:
        return self.windows.get(kind, 0.0)
