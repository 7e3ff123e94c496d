"""Box Kalman filter: convergence on a constant-velocity box, batching, time steps, noise scaling."""
from __future__ import annotations

import numpy as np
import pytest

from hcq_ros.tracking.kalman import BoxKalmanFilter, cxcywh_to_xyxy, xyxy_to_cxcywh


def test_box_conversions_round_trip():
    boxes = np.array([[10.0, 20.0, 50.0, 120.0], [0.0, 0.0, 1.0, 3.0]])
    c = xyxy_to_cxcywh(boxes)
    np.testing.assert_allclose(c[0], [30.0, 70.0, 40.0, 100.0])
    np.testing.assert_allclose(cxcywh_to_xyxy(c), boxes)


def test_constant_velocity_box_converges():
    kf = BoxKalmanFilter()
    rng = np.random.default_rng(0)
    dt, velocity = 0.04, np.array([150.0, -40.0, 8.0, 20.0])           # px/s (cx, cy, w, h)
    truth = np.array([100.0, 300.0, 40.0, 100.0])
    mean, cov = kf.initiate(truth[None] + rng.normal(0, 1.0, (1, 4)))
    for _ in range(60):
        truth = truth + velocity * dt
        mean, cov = kf.predict(mean, cov, dt)
        mean, cov = kf.update(mean, cov, truth[None] + rng.normal(0, 1.0, (1, 4)))
    np.testing.assert_allclose(mean[0, :4], truth, atol=2.0)
    np.testing.assert_allclose(mean[0, 4:], velocity, atol=0.15 * np.abs(velocity).max())
    # The prediction one second ahead lands where the box goes, within a box width.
    ahead, _ = kf.predict(mean, cov, 1.0)
    np.testing.assert_allclose(ahead[0, :2], truth[:2] + velocity[:2], atol=truth[2])


def test_batched_equals_one_by_one():
    kf = BoxKalmanFilter()
    rng = np.random.default_rng(1)
    z0 = np.abs(rng.normal(100, 30, (3, 4))) + 5
    z1 = z0 + rng.normal(0, 3, (3, 4))
    mean, cov = kf.initiate(z0)
    mean, cov = kf.predict(mean, cov, np.array([0.04, 0.1, 0.5]))
    mean, cov = kf.update(mean, cov, z1)
    for k, dt in enumerate((0.04, 0.1, 0.5)):
        m, c = kf.initiate(z0[k:k + 1])
        m, c = kf.predict(m, c, dt)
        m, c = kf.update(m, c, z1[k:k + 1])
        np.testing.assert_allclose(mean[k], m[0])
        np.testing.assert_allclose(cov[k], c[0])


def test_time_steps_and_uncertainty():
    kf = BoxKalmanFilter()
    mean, cov = kf.initiate(np.array([[50.0, 50.0, 20.0, 60.0]]))
    mean[0, 4:6] = [100.0, 10.0]
    same, same_cov = kf.predict(mean, cov, 0.0)
    np.testing.assert_allclose(same, mean)
    np.testing.assert_allclose(same_cov, cov)
    # A dropped frame is just a longer step: one 0.12 s step moves as far as three 0.04 s steps.
    m3, c3 = mean, cov
    for _ in range(3):
        m3, c3 = kf.predict(m3, c3, 0.04)
    m1, c1 = kf.predict(mean, cov, 0.12)
    np.testing.assert_allclose(m1, m3)
    np.testing.assert_allclose(m1[0, :2], [62.0, 51.2])
    # Uncertainty grows while predicting and shrinks with a measurement.
    assert np.trace(c1[0]) > np.trace(cov[0])
    _, updated = kf.update(m1, c1, m1[:, :4])
    assert np.trace(updated[0, :4, :4]) < np.trace(c1[0, :4, :4])
    assert np.allclose(updated[0], updated[0].T)
    with pytest.raises(ValueError, match="dt"):
        kf.predict(mean, cov, -0.1)


def test_noise_scales_with_box_size():
    kf = BoxKalmanFilter()
    small_mean, small_cov = kf.initiate(np.array([[0.0, 0.0, 10.0, 30.0]]))
    big_mean, big_cov = kf.initiate(np.array([[0.0, 0.0, 100.0, 300.0]]))
    np.testing.assert_allclose(big_cov, 100.0 * small_cov)
    _, s_small = kf.project(*kf.predict(small_mean, small_cov, 0.04))
    _, s_big = kf.project(*kf.predict(big_mean, big_cov, 0.04))
    np.testing.assert_allclose(s_big, 100.0 * s_small)


def test_update_validates():
    kf = BoxKalmanFilter()
    mean, cov = kf.initiate(np.array([[0.0, 0.0, 10.0, 30.0]]))
    with pytest.raises(ValueError, match="measurements"):
        kf.update(mean, cov, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="measurement_noise"):
        BoxKalmanFilter(measurement_noise=0.0)
