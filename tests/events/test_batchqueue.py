"""The pipeline's queue: bounded, batch-draining, and never blocking control messages."""

from __future__ import annotations

import threading

from userseg.events.batchqueue import BatchQueue


def test_batches_come_out_in_order_up_to_the_limit() -> None:
    q: BatchQueue[int] = BatchQueue(100)
    for i in range(10):
        assert q.put(i)
    assert q.get_batch(4, timeout=0) == [0, 1, 2, 3]
    assert q.get_batch(100, timeout=0) == [4, 5, 6, 7, 8, 9]
    assert q.get_batch(100, timeout=0) == []


def test_full_queue_refuses_non_blocking_puts_but_takes_forced_ones() -> None:
    q: BatchQueue[str] = BatchQueue(2)
    assert q.put("a", block=False) and q.put("b", block=False)
    assert not q.put("c", block=False)
    assert q.put("stop", force=True)
    assert q.qsize() == 3 and q.get_batch(10, timeout=0) == ["a", "b", "stop"]


def test_a_blocked_producer_resumes_when_the_consumer_drains() -> None:
    q: BatchQueue[int] = BatchQueue(1)
    q.put(0)
    done = threading.Event()

    def produce() -> None:
        q.put(1)  # blocks: the queue is full
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    assert not done.wait(0.2)
    assert q.get_batch(10, timeout=0) == [0]
    assert done.wait(5)
    t.join(5)
    assert q.get_batch(10, timeout=0) == [1]


def test_a_waiting_consumer_wakes_on_the_first_item() -> None:
    q: BatchQueue[int] = BatchQueue(10)
    got: list[list[int]] = []
    t = threading.Thread(target=lambda: got.append(q.get_batch(10, timeout=10)))
    t.start()
    q.put(7)
    t.join(5)
    assert got == [[7]]
