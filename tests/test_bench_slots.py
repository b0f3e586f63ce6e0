"""The bench's compute slots (dakd_core/bench/slots.py): never more holders than slots, and a
process that frees a slot and asks again queues behind the one already waiting."""

from __future__ import annotations

import multiprocessing as mp
import time

from dakd_core.bench.slots import FifoSlots, compute_slot, install


def _hold_and_count(slots, active, peak, lock, holds):
    install(slots)
    for _ in range(holds):
        with compute_slot():
            with lock:
                active.value += 1
                peak.value = max(peak.value, active.value)
            time.sleep(0.02)
            with lock:
                active.value -= 1


def test_never_more_holders_than_slots():
    ctx = mp.get_context("fork")
    slots = FifoSlots(2, ctx)
    active, peak, lock = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Lock()
    procs = [ctx.Process(target=_hold_and_count, args=(slots, active, peak, lock, 4)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert peak.value == 2  # four processes, sixteen holds: two at a time, never three
    assert slots._running.value == 0 and slots._done.value == 16


def _waiter(slots, order, lock, name):
    with slots.hold():
        with lock:
            order.append(name)


def test_slots_are_granted_in_the_order_they_were_asked_for():
    ctx = mp.get_context("fork")
    slots = FifoSlots(1, ctx)
    lock, waiters = ctx.Lock(), []
    with mp.Manager() as manager:
        order = manager.list()
        with slots.hold():
            order.append("A")
            for k in range(5):  # five processes queue behind A, one after the other
                waiters.append(ctx.Process(target=_waiter, args=(slots, order, lock, f"W{k}")))
                waiters[-1].start()
                deadline = time.monotonic() + 20
                while slots._issued.value < k + 2 and time.monotonic() < deadline:  # W{k} has its ticket
                    time.sleep(0.01)
                assert slots._issued.value == k + 2
        with slots.hold():  # A frees its slot and asks again at once: it goes behind all five
            with lock:
                order.append("A")
        for w in waiters:
            w.join(20)
        assert [w.exitcode for w in waiters] == [0] * 5
        # a plain semaphore serves the five in any of 120 orders and may hand A its slot straight back
        assert list(order) == ["A", "W0", "W1", "W2", "W3", "W4", "A"]
