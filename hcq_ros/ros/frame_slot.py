"""Newest-frame hand-off between a subscription callback and one worker thread, with drop counting. ROS-free.

A camera delivers frames faster than the pipeline may process them. Queuing them would add latency without
bound, so the callback only *replaces* the one pending frame (``NewestFrameSlot.put``; the replaced frame is
dropped and counted) and the worker always takes the newest one. End-to-end latency then stays below about
two processing times, whatever the input rate.

``FrameWorker`` owns the slot and the thread and keeps ``PipelineStats`` (fps, latency, per-stage ms, drops,
errors) for /diagnostics.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


@dataclass
class SlotEntry(Generic[T]):
    """A frame in the slot: the item, its arrival time (``time.monotonic()`` seconds) and arrival number."""
    item: T
    arrived_s: float
    seq: int


class NewestFrameSlot(Generic[T]):
    """Single-item mailbox: ``put`` replaces the pending item, ``take`` blocks for the newest one.

    Counters: ``received`` (every put), ``dropped`` (replaced before being taken, put after close, or
    discarded by close). After ``close``: received == taken + dropped.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._entry: Optional[SlotEntry[T]] = None
        self._closed = False
        self.received = 0
        self.dropped = 0
        self.taken = 0

    def put(self, item: T) -> bool:
        """Offer a frame; True if it replaced (dropped) an older pending one. Dropped at once when closed."""
        with self._cond:
            self.received += 1
            if self._closed:
                self.dropped += 1
                return False
            replaced = self._entry is not None
            if replaced:
                self.dropped += 1
            self._entry = SlotEntry(item, self._clock(), self.received)
            self._cond.notify()
            return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[SlotEntry[T]]:
        """The newest pending frame (removing it), waiting up to ``timeout`` s (None = until one arrives);
        None on timeout or once the slot is closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._entry is not None or self._closed, timeout):
                return None
            if self._closed:
                return None
            entry, self._entry = self._entry, None
            self.taken += 1
            return entry

    def close(self) -> None:
        """Wake every waiter; a still-pending frame is discarded and counted as dropped."""
        with self._cond:
            self._closed = True
            if self._entry is not None:
                self._entry = None
                self.dropped += 1
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass
class StatsSnapshot:
    """Pipeline health over the last ``window_s`` seconds (counters are totals since start).

    fps: frames processed per second; latency_ms / latency_max_ms: arrival -> handler done, mean / max;
    mean_ms: mean of each per-frame measurement the handler returned ({"decode_ms": ..., ...}); idle_s: seconds
    since the last frame arrived (None before the first)."""
    received: int
    processed: int
    dropped: int
    errors: int
    fps: float
    latency_ms: float
    latency_max_ms: float
    mean_ms: dict[str, float] = field(default_factory=dict)
    last_error: str = ""
    idle_s: Optional[float] = None


class PipelineStats:
    """Thread-safe rolling statistics of processed frames (one record per frame)."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._records: deque[tuple[float, float, dict[str, float]]] = deque()  # (done_s, latency_ms, {name: ms})
        self.processed = 0
        self.errors = 0
        self.last_error = ""

    def _trim(self, now: float) -> None:
        while self._records and self._records[0][0] < now - self.window_s:
            self._records.popleft()

    def record(self, arrived_s: float, measurements_ms: Optional[Mapping[str, float]] = None) -> float:
        """Count one processed frame that arrived at ``arrived_s`` with its per-frame measurements
        ({name: ms}); returns its latency in ms."""
        now = self._clock()
        latency_ms = (now - arrived_s) * 1000.0
        with self._lock:
            self.processed += 1
            self._records.append((now, latency_ms, {k: float(v) for k, v in (measurements_ms or {}).items()}))
            self._trim(now)
        return latency_ms

    def record_error(self, error: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(error).__name__}: {error}"

    def snapshot(self, received: int, dropped: int, last_arrival_s: Optional[float] = None) -> StatsSnapshot:
        now = self._clock()
        with self._lock:
            self._trim(now)
            records = list(self._records)
            processed, errors, last_error = self.processed, self.errors, self.last_error
        latencies = [r[1] for r in records]
        # fps over the span actually covered, so that a fresh start does not read as a low rate
        span = min(self.window_s, now - records[0][0]) if len(records) > 1 else 0.0
        fps = (len(records) - 1) / span if span > 0 else 0.0
        sums: dict[str, list[float]] = {}
        for _, _, measurements in records:
            for name, ms in measurements.items():
                sums.setdefault(name, []).append(ms)
        return StatsSnapshot(
            received=received, processed=processed, dropped=dropped, errors=errors, fps=fps,
            latency_ms=sum(latencies) / len(latencies) if latencies else 0.0,
            latency_max_ms=max(latencies, default=0.0),
            mean_ms={name: sum(v) / len(v) for name, v in sums.items()},
            last_error=last_error,
            idle_s=None if last_arrival_s is None else max(0.0, now - last_arrival_s))


class FrameWorker(Generic[T]):
    """A thread that runs ``handler(item)`` on the newest submitted item, dropping older ones.

    handler(item) -> optional per-frame measurements {name: ms} (averaged in the stats). An exception in the handler
    is counted, passed to ``on_error`` and does not stop the worker.

    then: a second stage on a second thread (``hcq_ros.pipeline_stages``): ``handler(item)`` (e.g. decode +
    detector) then returns the value that ``then(value)`` (describe + publish) receives, and ``then`` returns the
    measurements. The first stage works on the newest frame while the second works on the previous one, and takes
    its next frame only once the second stage has taken its last result: nothing queues between the stages
    (latency stays bounded, the frame detected next is the newest), and frames that arrive meanwhile are dropped
    in the slot as before. Items leave the second stage in the order they were taken.
    """

    def __init__(self, handler: Callable[[T], Any], on_error: Optional[Callable[[BaseException], None]] = None,
                 name: str = "hcq_perception_worker", window_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 then: Optional[Callable[[Any], Optional[Mapping[str, float]]]] = None):
        self._handler = handler
        self._then = then
        self._on_error = on_error
        self._name = name
        self._clock = clock
        self._slot: NewestFrameSlot[T] = NewestFrameSlot(clock)
        self.stats = PipelineStats(window_s, clock)
        self._threads: list[threading.Thread] = []
        self._handoff: "queue.Queue" = queue.Queue(maxsize=1)
        self._taken = threading.Event()
        self._last_arrival_s: Optional[float] = None

    def start(self) -> None:
        if self._threads:
            raise RuntimeError(f"worker {self._name} already started")
        self._threads = [threading.Thread(target=self._run, name=self._name, daemon=True)]
        if self._then is not None:
            self._threads.append(threading.Thread(target=self._run_second, name=self._name + "_second",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()

    def submit(self, item: T) -> bool:
        """Hand a frame over (cheap; safe from any thread). True if an older pending frame was dropped."""
        self._last_arrival_s = self._clock()
        return self._slot.put(item)

    def stop(self, timeout: Optional[float] = 10.0) -> bool:
        """Close the slot and join the thread(s) (the frames in progress finish); False if one is still running
        after ``timeout`` seconds."""
        self._slot.close()
        for thread in self._threads:
            thread.join(timeout)
        return not self.running

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def snapshot(self) -> StatsSnapshot:
        return self.stats.snapshot(self._slot.received, self._slot.dropped, self._last_arrival_s)

    def _failed(self, exc: BaseException) -> None:
        self.stats.record_error(exc)
        if self._on_error is not None:
            self._on_error(exc)

    def _run(self) -> None:
        while True:
            entry = self._slot.take()
            if entry is None:  # closed
                if self._then is not None:
                    self._handoff.put(None)   # the second stage finishes what it holds, then ends
                return
            try:
                result = self._handler(entry.item)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not kill the worker
                self._failed(exc)
                continue
            if self._then is None:
                self.stats.record(entry.arrived_s, result)
            else:   # wait until the second stage took it: the next frame is then taken as fresh as possible
                self._taken.clear()
                self._handoff.put((entry, result))
                self._taken.wait()

    def _run_second(self) -> None:
        while True:
            handed = self._handoff.get()
            self._taken.set()
            if handed is None:
                return
            entry, value = handed
            try:
                measurements = self._then(value)
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)
                continue
            self.stats.record(entry.arrived_s, measurements)


def health(snapshot: StatsSnapshot, errors_before: int, stale_after_s: float) -> tuple[str, str]:
    """(level, message) for /diagnostics: "ERROR" when frames failed since the last report (``errors_before``
    = the error count then), "WARN" when no frame arrived for ``stale_after_s`` seconds (or none yet), else
    "OK"."""
    if snapshot.errors > errors_before:
        return "ERROR", f"{snapshot.errors - errors_before} frame(s) failed: {snapshot.last_error}"
    if snapshot.idle_s is None:
        return "WARN", "no image received yet"
    if snapshot.idle_s > stale_after_s:
        return "WARN", f"no image for {snapshot.idle_s:.1f} s"
    return "OK", f"{snapshot.fps:.1f} fps, {snapshot.dropped} dropped"
