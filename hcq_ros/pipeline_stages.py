"""Two-stage pipelining: the detector of frame t+1 runs while frame t is described (DESIGN.md §8, speed).

On a 2-core CPU one onnxruntime session gains little from a second thread (the int8 detector at 320²: 26 ms at 1
thread, 22 ms at 2, `docs/benchmarks_int8.md`), while the per-person half (crops, PersonNet, tracker, messages)
waits for it. Running ``Perceptor.detect`` on a worker thread one frame ahead of ``Perceptor.describe`` makes the
frame period max(detect, describe) instead of their sum; each frame's latency stays about detect + describe.

``run_two_stage`` is the generic form (ordered, one output per input). ``first`` starts its next item only once
``second`` has taken the previous one: at most one finished item waits, so when ``second`` is the slower stage
(many people) ``first`` does not run further ahead and add its own queue to every frame's latency (int8 models,
320², 20 people: 158 instead of 234 ms median latency, same frame rate). Starting ``first`` later still, timed to
end when ``second`` does, did not lower it further: on these 2 cores the two stages slow each other down when
they overlap (the detector 25 -> 52 ms at 20 people), so the overlap cannot be hidden. Exceptions raised
by ``first`` or by the input iterator reach the caller at the position where they happened, after every earlier
output; the worker stops when the consumer stops early. ``FrameWorker(..., then=...)`` in
``hcq_ros.ros.frame_slot`` is the live-camera form used by the node (same hand-off rule).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")

_END = object()


class _Raised:
    """An exception of the worker (``first`` or the input iterator), carried to the consumer in order."""

    def __init__(self, error: BaseException):
        self.error = error


def run_two_stage(items: Iterable[A], first: Callable[[A], B], second: Callable[[B], C], *,
                  name: str = "hcq_first_stage") -> Iterator[C]:
    """Yield ``second(first(item))`` for every item, in order, with ``first`` on a worker thread.

    ``first`` runs on item k+1 while ``second`` runs on item k, and starts item k+2 once ``second`` has taken
    k+1. Closing the generator (a consumer's ``break``) stops the worker after its current item.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    taken = threading.Event()
    stop = threading.Event()

    def put(value: Any) -> bool:
        """Hand ``value`` over and wait until the consumer took it; False once the consumer has left (the waits
        are bounded so that a consumer that left does not strand the thread)."""
        taken.clear()
        while not stop.is_set():
            try:
                handoff.put(value, timeout=0.1)
                break
            except queue.Full:
                continue
        while not stop.is_set():
            if taken.wait(timeout=0.1):
                return True
        return False

    def work() -> None:
        try:
            for item in items:
                if stop.is_set() or not put(first(item)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Raised(exc))
            return
        put(_END)

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            value = handoff.get()
            taken.set()
            if value is _END:
                return
            if isinstance(value, _Raised):
                raise value.error
            yield second(value)
    finally:
        stop.set()
        worker.join(timeout=30.0)   # the item in progress finishes; a source blocked for longer is left behind


def run_stages(items: Iterable[A], first: Callable[[A], B], second: Callable[[B], C], *,
               pipelined: bool) -> Iterator[C]:
    """``second(first(item))`` for every item, in order: on two threads (``run_two_stage``) when ``pipelined``,
    else on the caller's thread. The one switch every stream of the package goes through."""
    if pipelined:
        return run_two_stage(items, first, second)
    return (second(first(item)) for item in items)
