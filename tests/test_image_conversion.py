"""Every supported image encoding: messages made here with numpy/cv2, decoded to RGB and compared."""
from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from hcq_ros.ros.image_conversion import (ImageDecodeError, array_to_image_msg, compressed_msg_to_rgb,
                                          image_msg_to_rgb, msg_to_rgb, rgb_to_compressed_msg, rgb_to_image_msg)
from hcq_ros.ros.typestore import get_typestore

H, W = 24, 32


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """Smooth uint8 [H, W, 3] test image (smooth so chroma subsampling and demosaicing are near-lossless)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    image = np.stack([40 + 5 * xx, 30 + 6 * yy, 200 - 2 * xx - 3 * yy], axis=-1)
    return np.clip(image, 0, 255).astype(np.uint8)


def raw_msg(encoding: str, pixels: np.ndarray, *, pad: int = 0, bigendian: bool = False, data_type=bytes):
    """A duck-typed sensor_msgs/Image from pixels [H, W(, C)]; rows padded with `pad` junk bytes."""
    h, w = pixels.shape[:2]
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(h, -1)
    junk = np.full((h, pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1).tobytes()
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                           step=rows.shape[1] + pad, data=data_type(data))


def gray_of(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


@pytest.mark.parametrize("encoding, make", [
    ("rgb8", lambda x: x),
    ("bgr8", lambda x: x[:, :, ::-1]),
    ("8UC3", lambda x: x[:, :, ::-1]),  # taken as BGR (OpenCV order)
    ("rgba8", lambda x: np.dstack([x, np.full(x.shape[:2], 7, np.uint8)])),
    ("bgra8", lambda x: np.dstack([x[:, :, ::-1], np.full(x.shape[:2], 7, np.uint8)])),
    ("8UC4", lambda x: np.dstack([x[:, :, ::-1], np.full(x.shape[:2], 7, np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 5])
def test_colour_encodings_are_exact(rgb, encoding, make, pad):
    msg = raw_msg(encoding, make(rgb), pad=pad)
    out = image_msg_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    # never a view of the (here read-only) message bytes
    assert out.flags.writeable and not np.may_share_memory(out, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8(rgb, encoding):
    gray = gray_of(rgb)
    out = image_msg_to_rgb(raw_msg(encoding, gray, pad=3))
    np.testing.assert_array_equal(out, np.dstack([gray] * 3))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 6])
def test_mono16_keeps_the_high_byte(rgb, bigendian, pad):
    gray = gray_of(rgb)
    mono16 = gray.astype(np.uint16) * 256 + np.arange(W, dtype=np.uint16)[None, :] % 256  # noise in low byte
    out = image_msg_to_rgb(raw_msg("mono16", mono16, pad=pad, bigendian=bigendian))
    np.testing.assert_array_equal(out[:, :, 0], gray)
    np.testing.assert_array_equal(out[:, :, 2], gray)


def test_16uc1_depth_is_rejected_for_inference_and_scaled_for_display():
    depth = np.zeros((H, W), np.uint16)
    depth[4:20, 8:24] = np.linspace(500, 4500, 16 * 16).reshape(16, 16).astype(np.uint16)  # mm, 0 = no data
    msg = raw_msg("16UC1", depth, pad=2, bigendian=True)
    with pytest.raises(ImageDecodeError, match="depth image"):
        image_msg_to_rgb(msg)
    out = image_msg_to_rgb(msg, allow_depth=True)
    assert out[0, 0].tolist() == [0, 0, 0]                 # no data stays black
    assert out[4, 8, 0] == 1 and out[19, 23, 0] == 255     # nearest / farthest valid depth
    assert np.all(np.diff(out[4, 8:24, 0].astype(int)) >= 0)  # monotonic


def test_32fc1_depth_ignores_nan():
    depth = np.full((H, W), np.nan, np.float32)
    depth[:, W // 2:] = np.linspace(0.5, 3.0, W // 2, dtype=np.float32)[None, :]
    out = image_msg_to_rgb(raw_msg("32FC1", depth), allow_depth=True)
    assert out[:, 0].max() == 0 and out[0, W // 2, 0] == 1 and out[0, -1, 0] == 255


def yuv422_bytes(rgb: np.ndarray, order: str) -> np.ndarray:
    """BT.601 limited-range packed 4:2:2, chroma averaged over each horizontal pixel pair -> uint8 [H, W, 2]."""
    r, g, b = [rgb[:, :, i].astype(np.float64) for i in range(3)]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u2 = (u[:, 0::2] + u[:, 1::2]) / 2
    v2 = (v[:, 0::2] + v[:, 1::2]) / 2
    y0, y1 = y[:, 0::2], y[:, 1::2]
    quads = [u2, y0, v2, y1] if order == "uyvy" else [y0, u2, y1, v2]
    packed = np.stack(quads, axis=-1).reshape(rgb.shape[0], rgb.shape[1], 2)
    return np.clip(np.round(packed), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("encoding, order", [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuyv", "yuyv"),
                                             ("yuv422_yuy2", "yuyv")])
def test_packed_yuv422(rgb, encoding, order):
    out = image_msg_to_rgb(raw_msg(encoding, yuv422_bytes(rgb, order), pad=4))
    err = np.abs(out.astype(int) - rgb)
    assert err.mean() < 2.0 and err.max() <= 8, (err.mean(), err.max())
    # the wrong byte order is far off: the test can tell the two layouts apart
    wrong = "yuyv" if order == "uyvy" else "uyvy"
    assert np.abs(image_msg_to_rgb(raw_msg(wrong, yuv422_bytes(rgb, order))).astype(int) - rgb).mean() > 20


def bayer_mosaic(rgb: np.ndarray, pattern: str, dtype=np.uint8) -> np.ndarray:
    """Sample rgb [H, W, 3] through a ROS Bayer pattern ('rggb' = R at (0,0), G at (0,1), ...) -> [H, W]."""
    channel = {"r": 0, "g": 1, "b": 2}
    values = rgb.astype(np.uint16) * (257 if dtype == np.uint16 else 1)
    out = np.zeros(rgb.shape[:2], dtype)
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[dy::2, dx::2] = values[dy::2, dx::2, channel[pattern[k]]]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_demosaic(rgb, pattern, bits):
    dtype = np.uint8 if bits == 8 else np.uint16
    # Flat colour: exact in the interior for the right pattern, far off for a wrong one.
    flat = np.empty((H, W, 3), np.uint8)
    flat[:] = (200, 100, 30)
    out = image_msg_to_rgb(raw_msg(f"bayer_{pattern}{bits}", bayer_mosaic(flat, pattern, dtype), pad=2))
    np.testing.assert_array_equal(out[2:-2, 2:-2], flat[2:-2, 2:-2])
    # Smooth image: bilinear demosaicing error stays small away from the border.
    out = image_msg_to_rgb(raw_msg(f"bayer_{pattern}{bits}", bayer_mosaic(rgb, pattern, dtype)))
    assert np.abs(out[2:-2, 2:-2].astype(int) - rgb[2:-2, 2:-2]).mean() < 3.0


@pytest.mark.parametrize("data_type", [bytes, bytearray, memoryview, lambda b: array.array("B", b),
                                       lambda b: list(b), lambda b: np.frombuffer(b, np.uint8)])
def test_any_byte_container(rgb, data_type):
    np.testing.assert_array_equal(image_msg_to_rgb(raw_msg("rgb8", rgb, pad=1, data_type=data_type)), rgb)


@pytest.mark.parametrize("change, problem", [
    (dict(encoding="rgb9"), "unsupported image encoding 'rgb9'"),
    (dict(data=b"\x00" * (H * W * 3 - 1)), "truncated data"),
    (dict(width=0), "zero-size"),
    (dict(height=0, data=b""), "zero-size"),
    (dict(step=W * 3 - 1), "step"),
    (dict(data=np.zeros(H * W * 3, np.int64)), "uint8 buffer"),
])
def test_bad_images_are_named(rgb, change, problem):
    msg = raw_msg("rgb8", rgb)
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ImageDecodeError, match=problem):
        image_msg_to_rgb(msg)


def test_max_pixels_and_odd_yuv_width(rgb):
    with pytest.raises(ImageDecodeError, match="exceeds max_pixels=100"):
        image_msg_to_rgb(raw_msg("rgb8", rgb), max_pixels=100)
    huge = SimpleNamespace(height=100_000, width=100_000, encoding="rgb8", is_bigendian=0, step=300_000, data=b"")
    with pytest.raises(ImageDecodeError, match="exceeds max_pixels"):  # checked before touching the data
        image_msg_to_rgb(huge)
    odd = raw_msg("yuyv", np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ImageDecodeError, match="even width"):
        image_msg_to_rgb(odd)
    assert issubclass(ImageDecodeError, ValueError)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_builder_round_trip_rosbags_and_plain_factory(rgb, encoding):
    header = SimpleNamespace(frame_id="cam")
    image_class = get_typestore().types["sensor_msgs/msg/Image"]
    expected = np.dstack([gray_of(rgb)] * 3) if encoding == "mono8" else rgb
    built = rgb_to_image_msg(rgb, header, encoding, image_class)
    assert isinstance(built, image_class) and isinstance(built.data, np.ndarray)
    assert built.step == W * {"mono8": 1, "rgb8": 3, "bgr8": 3}.get(encoding, 4)
    np.testing.assert_array_equal(image_msg_to_rgb(built), expected)
    # Any factory taking the fields as keywords (rclpy's Image class behaves like this one).
    plain = rgb_to_image_msg(rgb, header, encoding, SimpleNamespace)
    assert isinstance(plain.data, array.array) and plain.header is header
    np.testing.assert_array_equal(image_msg_to_rgb(plain), expected)


def test_builder_default_factory_is_rosbags_and_serialises(rgb):
    store = get_typestore()
    header = store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2),
                                                frame_id="cam")
    msg = rgb_to_image_msg(rgb, header)
    back = store.deserialize_cdr(store.serialize_cdr(msg, "sensor_msgs/msg/Image"), "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(image_msg_to_rgb(back), rgb)


def test_array_builder_for_masks_and_depth():
    mask = np.zeros((5, 7), np.uint8)
    mask[1:4, 2:6] = 255
    msg = array_to_image_msg(mask, None, "mono8", SimpleNamespace)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 7, "mono8")
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(5, 7), mask)
    depth = np.arange(35, dtype=np.uint16).reshape(5, 7) * 100
    msg = array_to_image_msg(depth, None, "16UC1", SimpleNamespace)
    assert msg.step == 14
    assert image_msg_to_rgb(msg, allow_depth=True)[4, 6, 0] == 255
    with pytest.raises(ValueError, match=r"mono8 needs uint8 \[H, W\]"):
        array_to_image_msg(depth, None, "mono8", SimpleNamespace)
    with pytest.raises(ValueError, match="cannot build encoding"):
        array_to_image_msg(mask, None, "yuv422", SimpleNamespace)
    with pytest.raises(ValueError, match="uint8 \\[H, W, 3\\]"):
        rgb_to_image_msg(mask, None, "rgb8", SimpleNamespace)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_round_trip(rgb, fmt):
    msg = rgb_to_compressed_msg(rgb, None, fmt, compressed_type=SimpleNamespace)
    assert msg.format == f"rgb8; {fmt} compressed bgr8"
    out = compressed_msg_to_rgb(msg)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    if fmt == "png":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 3.0  # lossy, but colour order must be right
    np.testing.assert_array_equal(msg_to_rgb(msg), out)  # dispatch on the fields


def test_compressed_decodes_mono_png_to_rgb():
    gray = np.tile(np.arange(W, dtype=np.uint8) * 8, (H, 1))
    ok, png = cv2.imencode(".png", gray)
    out = compressed_msg_to_rgb(SimpleNamespace(format="png", data=png.tobytes()))
    np.testing.assert_array_equal(out, np.dstack([gray] * 3))


def test_bad_compressed_images_are_named(rgb):
    jpeg = rgb_to_compressed_msg(rgb, None, "jpeg", compressed_type=SimpleNamespace).data.tobytes()
    png = rgb_to_compressed_msg(rgb, None, "png", compressed_type=SimpleNamespace).data.tobytes()
    cases = [
        (b"", "no data"),
        (b"this is not an image" * 5, "not a decodable jpeg/png"),
        (jpeg[: len(jpeg) // 2], "truncated JPEG"),
        (png[: len(png) // 2], "not a decodable"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a decodable"),
    ]
    for data, problem in cases:
        with pytest.raises(ImageDecodeError, match=problem):
            compressed_msg_to_rgb(SimpleNamespace(format="jpeg", data=data))
    with pytest.raises(ImageDecodeError, match="depth"):
        compressed_msg_to_rgb(SimpleNamespace(format="16UC1; compressedDepth png", data=png))
    with pytest.raises(ImageDecodeError, match="exceeds max_pixels"):
        compressed_msg_to_rgb(SimpleNamespace(format="png", data=png), max_pixels=10)
    # a JPEG with trailing padding after its end-of-image marker is still valid
    out = compressed_msg_to_rgb(SimpleNamespace(format="jpeg", data=jpeg + b"\x00" * 64))
    assert out.shape == (H, W, 3)
