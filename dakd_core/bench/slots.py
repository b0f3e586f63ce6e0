"""Compute slots shared by the bench's seed processes: at most N stages compute at once, served
first come, first served.

`dakd bench results --jobs 3` runs three seed processes of one torch thread each. With two slots on
two cores, two stages compute while the third process waits for the next free slot, instead of
three processes time-sharing two cores. Measured on the bench's own stages (docs/results.md,
notes): the pretrain and adaptation stages took 0.661x, in total, the wall time they took with all
three computing at once, where plain sharing predicts 0.667x; the gain is about 1 %, not more. The queue is
a ticket lock, so a process that frees a slot and asks again goes behind the waiting one: all
seeds advance together and finish close to each other (with a plain semaphore the freeing
process could take the slot straight back and leave one seed to run alone at the end).
"""

from __future__ import annotations

from contextlib import contextmanager

_slots = None  # this process's FifoSlots, set by `install` in each seed process


class FifoSlots:
    """A counting lock over processes that grants in ticket order (built in the parent, passed to
    the workers at their start: multiprocessing primitives cross only then)."""

    def __init__(self, n: int, ctx):
        if n < 1:
            raise ValueError(f"slots: need at least 1, got {n}")
        self.n = n
        self._cond = ctx.Condition()
        self._issued = ctx.Value("q", 0, lock=False)  # tickets handed out
        self._done = ctx.Value("q", 0, lock=False)  # tickets that have released their slot
        self._running = ctx.Value("q", 0, lock=False)

    @contextmanager
    def hold(self):
        with self._cond:
            ticket = self._issued.value
            self._issued.value += 1
            # ticket t runs once every earlier ticket has started and a slot is free; tickets
            # start in order, so `started` is the count of tickets below t
            self._cond.wait_for(lambda: self._started() == ticket and self._running.value < self.n)
            self._running.value += 1
            self._cond.notify_all()  # the next ticket may now check for a second free slot
        try:
            yield
        finally:
            with self._cond:
                self._running.value -= 1
                self._done.value += 1
                self._cond.notify_all()

    def _started(self) -> int:
        return self._done.value + self._running.value


def install(slots: FifoSlots | None) -> None:
    """Make `slots` this process's limiter (a ProcessPoolExecutor initializer)."""
    global _slots
    _slots = slots


@contextmanager
def compute_slot():
    """Hold one slot while the body computes; no limiter installed: no waiting."""
    if _slots is None:
        yield
        return
    with _slots.hold():
        yield
