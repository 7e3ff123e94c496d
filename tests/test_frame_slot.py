"""Newest-frame slot and worker (hcq_ros.ros.frame_slot): drop counting, ordering, bounded latency, stats."""
from __future__ import annotations

import threading
import time

import pytest

from hcq_ros.ros.frame_slot import FrameWorker, NewestFrameSlot, PipelineStats, StatsSnapshot, health


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_slot_keeps_only_the_newest_and_counts_drops():
    clock = FakeClock()
    slot = NewestFrameSlot(clock)
    assert slot.put("a") is False
    clock.now += 1
    assert slot.put("b") is True
    assert slot.put("c") is True
    entry = slot.take(timeout=0)
    assert (entry.item, entry.seq, entry.arrived_s) == ("c", 3, 101.0)
    assert slot.take(timeout=0.01) is None  # empty: times out
    assert (slot.received, slot.taken, slot.dropped) == (3, 1, 2)
    slot.put("d")
    slot.close()  # the pending "d" is discarded
    slot.put("e")  # after close: dropped at once
    assert slot.take(timeout=0) is None
    assert slot.received == slot.taken + slot.dropped == 5


def test_close_wakes_a_blocked_taker():
    slot = NewestFrameSlot()
    result = []
    taker = threading.Thread(target=lambda: result.append(slot.take()))
    taker.start()
    time.sleep(0.05)
    slot.close()
    taker.join(2.0)
    assert not taker.is_alive() and result == [None]


def test_fast_producer_slow_worker_drops_old_frames_with_bounded_latency():
    """A producer at ~1 kHz against a 20 ms handler: almost everything is dropped, the frames processed are
    always newer than the previous one, each waits at most about one handler run, and the last frame put is
    the last one processed."""
    handler_s, frames = 0.02, 300
    processed: list[tuple[int, float]] = []  # (frame number, age when processing started)

    def handler(item: tuple[int, float]):
        processed.append((item[0], time.monotonic() - item[1]))
        time.sleep(handler_s)
        return {"handler_ms": handler_s * 1e3}

    worker = FrameWorker(handler, name="test_worker")
    worker.start()
    for number in range(frames):
        worker.submit((number, time.monotonic()))
        time.sleep(0.001)
    deadline = time.monotonic() + 5.0
    while (not processed or processed[-1][0] != frames - 1) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert worker.stop(timeout=2.0) and not worker.running  # the frame in progress finishes first
    snapshot = worker.snapshot()
    numbers = [n for n, _ in processed]
    assert numbers[-1] == frames - 1, "the newest frame must be processed"
    assert numbers == sorted(set(numbers)), "never an older frame after a newer one"
    assert 2 <= len(processed) < frames / 3
    # A FIFO would reach ~frames * handler_s = 6 s of waiting; the slot bounds it near one handler run.
    assert max(age for _, age in processed) < 10 * handler_s
    assert snapshot.received == frames and snapshot.processed == len(processed)
    assert snapshot.dropped == frames - len(processed)
    assert snapshot.latency_max_ms < 1e3 * 12 * handler_s
    assert snapshot.mean_ms["handler_ms"] == pytest.approx(handler_s * 1e3)
    assert snapshot.errors == 0 and snapshot.idle_s is not None


def test_handler_errors_are_counted_and_do_not_stop_the_worker():
    errors: list[BaseException] = []
    done = threading.Event()

    def handler(item: int):
        if item % 2:
            raise ValueError(f"bad frame {item}")
        if item == 4:
            done.set()
        return None

    worker = FrameWorker(handler, on_error=errors.append)
    worker.start()
    for item in range(5):
        worker.submit(item)
        deadline = time.monotonic() + 2.0  # let each frame through, so none is dropped
        while worker.snapshot().processed + worker.snapshot().errors <= item and time.monotonic() < deadline:
            time.sleep(0.002)
    assert done.wait(2.0)
    assert worker.stop()
    snapshot = worker.snapshot()
    assert (snapshot.processed, snapshot.errors, snapshot.dropped) == (3, 2, 0)
    assert [str(e) for e in errors] == ["bad frame 1", "bad frame 3"]
    assert snapshot.last_error == "ValueError: bad frame 3"


def test_worker_lifecycle_errors():
    worker = FrameWorker(lambda item: None)
    assert worker.stop()  # never started: nothing to join
    worker = FrameWorker(lambda item: None)
    worker.start()
    with pytest.raises(RuntimeError, match="already started"):
        worker.start()
    assert worker.stop()
    with pytest.raises(ValueError, match="window_s"):
        PipelineStats(window_s=0)


def test_stats_fps_latency_and_window():
    clock = FakeClock(0.0)
    stats = PipelineStats(window_s=2.0, clock=clock)
    for i in range(11):  # 10 Hz for 1 s, 30 ms latency each
        clock.now = i * 0.1
        stats.record(clock.now - 0.03, {"detector_ms": 10.0 + i})
    snapshot = stats.snapshot(received=15, dropped=4, last_arrival_s=1.0)
    assert snapshot.fps == pytest.approx(10.0)
    assert snapshot.latency_ms == pytest.approx(30.0) and snapshot.latency_max_ms == pytest.approx(30.0)
    assert snapshot.mean_ms["detector_ms"] == pytest.approx(15.0)
    assert (snapshot.received, snapshot.dropped, snapshot.processed, snapshot.idle_s) == (15, 4, 11, 0.0)
    clock.now = 10.0  # everything left the window; totals stay
    later = stats.snapshot(received=15, dropped=4, last_arrival_s=1.0)
    assert later.fps == 0.0 and later.mean_ms == {} and later.processed == 11 and later.idle_s == 9.0


def test_health_levels():
    base = dict(received=10, processed=10, dropped=0, fps=9.5, latency_ms=20.0, latency_max_ms=30.0)
    ok = StatsSnapshot(errors=1, idle_s=0.2, **base)
    assert health(ok, errors_before=1, stale_after_s=2.0)[0] == "OK"
    assert health(StatsSnapshot(errors=0, idle_s=None, **base), 0, 2.0) == ("WARN", "no image received yet")
    level, message = health(StatsSnapshot(errors=0, idle_s=5.0, **base), 0, 2.0)
    assert level == "WARN" and "5.0 s" in message
    failed = StatsSnapshot(errors=3, idle_s=0.1, last_error="ValueError: x", **base)
    level, message = health(failed, errors_before=1, stale_after_s=2.0)
    assert level == "ERROR" and message.startswith("2 frame(s) failed") and "ValueError: x" in message
