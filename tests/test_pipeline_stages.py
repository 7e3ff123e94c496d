"""Two-stage pipelining (hcq_ros.pipeline_stages, FrameWorker(then=...)): order, one output per input, bounded
look-ahead, real overlap of the two stages, errors in place, early stop; and the pipelined Perceptor / replay give
exactly the sequential outputs."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from hcq_ros.evaluation.soak import frame_pool, tiny_config
from hcq_ros.pipeline import Perceptor
from hcq_ros.pipeline_stages import run_two_stage
from hcq_ros.ros.frame_slot import FrameWorker


def test_every_item_comes_out_once_in_order_with_first_on_another_thread():
    first_threads = set()

    def first(x):
        first_threads.add(threading.current_thread().name)
        return x * 10

    out = list(run_two_stage(range(50), first, lambda y: y + 1))
    assert out == [x * 10 + 1 for x in range(50)]
    assert first_threads == {"hcq_first_stage"}
    assert list(run_two_stage([], first, lambda y: y)) == []


def test_first_starts_an_item_only_after_second_took_the_previous_one():
    started, taken = [], []

    def second(x):
        # while second works on x, first may have started (or finished) x + 1, never x + 2
        assert max(started) <= x + 1
        taken.append(x)
        return x

    assert list(run_two_stage(range(30), lambda x: started.append(x) or x, second)) == list(range(30))


def test_the_two_stages_overlap():
    """first(item 1) waits until second(item 0) has started: this only finishes if they really run at once."""
    second_started = threading.Event()

    def first(x):
        if x == 1 and not second_started.wait(timeout=20):
            raise AssertionError("second(0) never started while first(1) ran")
        return x

    def second(x):
        second_started.set()
        return x

    assert list(run_two_stage(range(3), first, second)) == [0, 1, 2]


def test_an_error_in_first_or_in_the_input_arrives_after_the_earlier_outputs():
    def first(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    out = []
    with pytest.raises(ValueError, match="bad item 3"):
        for y in run_two_stage(range(10), first, lambda y: y):
            out.append(y)
    assert out == [0, 1, 2]

    def source():
        yield from (0, 1)
        raise OSError("camera unplugged")

    out = []
    with pytest.raises(OSError, match="camera unplugged"):
        for y in run_two_stage(source(), lambda x: x, lambda y: y):
            out.append(y)
    assert out == [0, 1]


def test_a_consumer_that_stops_early_stops_the_worker():
    pulled = []

    def source():
        for i in range(10_000):
            pulled.append(i)
            yield i

    stream = run_two_stage(source(), lambda x: x, lambda y: y)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()   # joins the worker
    assert len(pulled) < 10
    assert not any(t.name == "hcq_first_stage" and t.is_alive() for t in threading.enumerate())


# ------------------------------------------------------------------------------------------- FrameWorker
def test_two_stage_frame_worker_keeps_order_counts_errors_and_stops_both_threads():
    done, errors = [], []

    def first(item):
        if item == "bad-first":
            raise ValueError("cannot decode")
        return item.upper()

    def second(value):
        if value == "BAD-SECOND":
            raise RuntimeError("publish failed")
        done.append(value)
        return {"describe_ms": 1.0}

    worker = FrameWorker(first, on_error=errors.append, then=second)
    worker.start()
    assert len([t for t in threading.enumerate() if t.name.startswith("hcq_perception_worker")]) == 2
    for item in ("a", "bad-first", "bad-second", "b", "c"):   # one at a time: none is replaced in the slot
        worker.submit(item)
        for _ in range(10_000):
            snap = worker.snapshot()
            if snap.processed + snap.errors >= snap.received:
                break
            threading.Event().wait(0.002)
    assert worker.stop() and not worker.running
    snap = worker.snapshot()
    assert done == ["A", "B", "C"]
    assert snap.processed == 3 and snap.errors == 2 and snap.mean_ms == {"describe_ms": 1.0}
    assert [type(e) for e in errors] == [ValueError, RuntimeError]


def test_two_stage_frame_worker_drops_frames_that_arrive_while_both_stages_are_busy():
    in_second, release, seen = threading.Event(), threading.Event(), []

    def second(value):
        in_second.set()
        release.wait(timeout=20)
        seen.append(value)

    worker = FrameWorker(lambda item: item, then=second)
    worker.start()
    worker.submit(0)
    assert in_second.wait(timeout=20)
    for i in range(1, 20):   # 0 is in the second stage; one more waits in the hand-off, the rest replace each other
        worker.submit(i)
    release.set()
    for _ in range(10_000):
        snap = worker.snapshot()
        if snap.processed + snap.dropped >= snap.received:
            break
        threading.Event().wait(0.002)
    assert worker.stop()
    snap = worker.snapshot()
    assert snap.received == 20 and snap.processed + snap.dropped == 20 and snap.dropped > 0
    assert seen[0] == 0 and seen[-1] == 19 and seen == sorted(seen) and len(seen) == snap.processed


# ------------------------------------------------------------------------------------------- Perceptor
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_models_stages")
    tiny_config(folder)
    return folder


def test_pipelined_stream_gives_exactly_the_sequential_frames(model_dir):
    images = frame_pool(4, 64, 64)
    frames = [(1_000 + k, "cam", images[k % len(images)]) for k in range(8)]
    frames.insert(3, (1_002, "cam", np.zeros((4, 4), np.uint8)))   # a bad frame stays in place, dropped
    config = tiny_config(model_dir)
    sequential = Perceptor(dataclasses.replace(config, pipelined=False))
    pipelined = Perceptor(dataclasses.replace(config, pipelined=True), detector=sequential.detector,
                          person_net=sequential.person_net)
    a, b = list(sequential.process_stream(frames)), list(pipelined.process_stream(frames))
    assert len(a) == len(b) == len(frames)
    assert b[3].dropped and "uint8 [H, W, 3]" in b[3].dropped and a[3].dropped == b[3].dropped
    assert sum(len(f.persons) for f in a) > 0
    for fa, fb in zip(a, b):
        assert (fa.stamp_ns, fa.frame_id, fa.image_size) == (fb.stamp_ns, fb.frame_id, fb.image_size)
        assert [p.track_id for p in fa.persons] == [p.track_id for p in fb.persons]
        for pa, pb in zip(fa.persons, fb.persons):
            np.testing.assert_array_equal(pa.box, pb.box)
            np.testing.assert_array_equal(pa.keypoints, pb.keypoints)
            np.testing.assert_array_equal(pa.mask, pb.mask)
            np.testing.assert_array_equal(pa.parts, pb.parts)
            np.testing.assert_array_equal(pa.embedding, pb.embedding)
            assert pa.attributes == pb.attributes
    sequential.close()
