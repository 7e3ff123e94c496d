"""numpy <-> sensor_msgs/Image and sensor_msgs/CompressedImage, without ROS.

Works on any object with the message fields (rosbags dataclasses, rclpy messages): it only reads
``height, width, encoding, is_bigendian, step, data`` (Image) or ``format, data`` (CompressedImage).
The pipeline input is always ``uint8 [H, W, 3]`` RGB.

Inside the ROS 2 node, cv_bridge is used when it is installed (the node decides, not this module); this module
is the fallback and the off-ROS path. The tests cover the same encodings cv_bridge handles for us:
rgb8, bgr8, rgba8, bgra8, mono8, mono16, 8UC1/8UC3/8UC4, 16UC1/32FC1 (depth), yuv422 (= uyvy), yuyv
(= yuv422_yuy2), bayer_{rggb,bggr,gbrg,grbg}{8,16}, and jpeg/png CompressedImage.

Decisions:
- ``8UC3`` / ``8UC4`` carry no colour order; they are taken as BGR / BGRA, what OpenCV-based publishers emit.
- ``mono16`` is an intensity image: scaled to 8 bit by keeping the high byte.
- ``16UC1`` (millimetres) and ``32FC1`` (metres) are depth images: a person detector on depth is meaningless,
  so they are rejected unless ``allow_depth=True``, which min-max scales the valid (> 0, finite) depths to
  grey for display only.
"""
from __future__ import annotations

import array
import sys
from typing import Any, Callable

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 8192 * 8192  # guards against garbage width/height fields (64 Mpx ~ 200 MB as RGB)


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an RGB frame; the message says what was wrong."""


# encoding -> (kind, channels, bytes per channel). kind selects the conversion to RGB.
_RAW_ENCODINGS: dict[str, tuple[str, int, int]] = {
    "rgb8": ("rgb", 3, 1), "bgr8": ("bgr", 3, 1), "8UC3": ("bgr", 3, 1),
    "rgba8": ("rgba", 4, 1), "bgra8": ("bgra", 4, 1), "8UC4": ("bgra", 4, 1),
    "mono8": ("mono", 1, 1), "8UC1": ("mono", 1, 1),
    "mono16": ("mono", 1, 2),
    "16UC1": ("depth", 1, 2), "32FC1": ("depth", 1, 4),
    "yuv422": ("uyvy", 2, 1), "uyvy": ("uyvy", 2, 1),
    "yuyv": ("yuyv", 2, 1), "yuv422_yuy2": ("yuyv", 2, 1),
}
# OpenCV names Bayer patterns by the 2x2 block starting at pixel (1, 1), ROS by the one at (0, 0):
# ROS rggb == OpenCV BG (the same mapping cv_bridge uses; the *RGGB aliases only exist in OpenCV >= 4.6).
_BAYER_TO_CV = {"rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB,
                "gbrg": cv2.COLOR_BayerGR2RGB, "grbg": cv2.COLOR_BayerGB2RGB}
for _pattern in _BAYER_TO_CV:
    _RAW_ENCODINGS[f"bayer_{_pattern}8"] = (f"bayer_{_pattern}", 1, 1)
    _RAW_ENCODINGS[f"bayer_{_pattern}16"] = (f"bayer_{_pattern}", 1, 2)

SUPPORTED_ENCODINGS = tuple(sorted(_RAW_ENCODINGS))


def _buffer(data: Any) -> np.ndarray:
    """Message ``data`` (numpy array, bytes, array.array, memoryview or list of ints) -> flat uint8 view."""
    if isinstance(data, np.ndarray):
        if data.dtype.itemsize != 1:
            raise ImageDecodeError(f"image data must be a uint8 buffer, got a {data.dtype} array")
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(f"image data of type {type(data).__name__} is not a byte buffer: {exc}") from exc


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{what}: zero-size image (width={width}, height={height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{what}: {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}")


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _depth_to_gray(depth: np.ndarray) -> np.ndarray:
    """Depth [H, W] (uint16 mm or float32 m) -> uint8 [H, W]: valid depths min-max scaled, invalid = 0."""
    values = depth.astype(np.float64)
    valid = np.isfinite(values) & (values > 0)
    gray = np.zeros(depth.shape, np.uint8)
    if valid.any():
        lo, hi = values[valid].min(), values[valid].max()
        scale = 254.0 / (hi - lo) if hi > lo else 0.0
        gray[valid] = (1.0 + (values[valid] - lo) * scale).round().astype(np.uint8)  # 1..255, 0 = no data
    return gray


def image_msg_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, allow_depth: bool = False) -> np.ndarray:
    """sensor_msgs/Image -> uint8 [H, W, 3] RGB (a new array; never a view of the message buffer).

    Honours ``step`` (row padding) and ``is_bigendian`` (16/32-bit encodings). Raises ImageDecodeError for an
    unknown encoding, zero or oversize dimensions, a step shorter than a row, data shorter than step * height,
    odd widths in packed YUV, and depth encodings unless ``allow_depth``.
    """
    encoding = str(msg.encoding).strip()
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    what = f"Image {encoding!r} {width}x{height}"
    if encoding not in _RAW_ENCODINGS:
        raise ImageDecodeError(f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    kind, channels, item = _RAW_ENCODINGS[encoding]
    _check_size(width, height, max_pixels, what)
    if kind == "depth" and not allow_depth:
        raise ImageDecodeError(f"{what}: {encoding} is a depth image, not usable for RGB inference "
                               "(pass allow_depth=True to scale it to grey for display)")
    if kind in ("uyvy", "yuyv") and width % 2:
        raise ImageDecodeError(f"{what}: packed YUV 4:2:2 needs an even width")
    row_bytes = width * channels * item
    if step < row_bytes:
        raise ImageDecodeError(f"{what}: step {step} is shorter than one row ({width} px * {channels * item} B = "
                               f"{row_bytes} B)")
    buf = _buffer(msg.data)
    if buf.size < step * height:
        raise ImageDecodeError(f"{what}: truncated data, {buf.size} bytes < step * height = {step * height}")
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]  # drops the row padding
    if item == 1:
        pixels = np.ascontiguousarray(rows).reshape(height, width, channels)
    else:
        kind_char = "f" if encoding == "32FC1" else "u"
        dtype = np.dtype(f"{'>' if int(msg.is_bigendian) else '<'}{kind_char}{item}")
        pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
        pixels = pixels.astype(dtype.newbyteorder("="))  # native order for OpenCV
    try:
        rgb = _to_rgb(kind, pixels)
    except cv2.error as exc:
        raise ImageDecodeError(f"{what}: OpenCV conversion failed: {exc}") from exc
    # rgb8 without padding is still a view of the (possibly read-only) message buffer: copy it out.
    return rgb.copy() if np.may_share_memory(rgb, buf) else np.ascontiguousarray(rgb)


def _to_rgb(kind: str, pixels: np.ndarray) -> np.ndarray:
    """pixels [H, W, C] in the encoding's layout -> uint8 [H, W, 3] RGB."""
    if kind == "rgb":
        return pixels
    if kind == "bgr":  # cv2 (SIMD) is ~10x faster than copying a reversed numpy view
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if kind == "rgba":
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
    if kind == "bgra":
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    if kind == "mono":
        gray = pixels[:, :, 0]
        return _gray_to_rgb(gray if gray.dtype == np.uint8 else (gray >> 8).astype(np.uint8))
    if kind == "depth":
        return _gray_to_rgb(_depth_to_gray(pixels[:, :, 0]))
    if kind == "uyvy":
        return cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_UYVY)
    if kind == "yuyv":
        return cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_YUY2)
    if kind.startswith("bayer_"):
        rgb = cv2.cvtColor(pixels[:, :, 0], _BAYER_TO_CV[kind[6:]])
        return rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)
    raise AssertionError(f"unhandled kind {kind}")


def _jpeg_truncated(data: bytes) -> bool:
    """True if no EOI marker follows the last start-of-scan. Byte stuffing keeps FF D9 / FF DA out of
    entropy-coded data, so valid files pass (padding after EOI, EXIF thumbnails and MPO images included)."""
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda") or b"\xff\xd9" not in data


def compressed_msg_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg / png) -> uint8 [H, W, 3] RGB.

    image_transport stores colour JPEG/PNG as BGR whatever the ``format`` prefix says ("rgb8; jpeg compressed
    bgr8"), and cv2.imdecode returns BGR, so the result is always converted BGR -> RGB. compressedDepth is
    rejected (depth). Empty, corrupted or truncated bytes raise ImageDecodeError.
    """
    fmt = str(msg.format).strip()
    if "compresseddepth" in fmt.lower():
        raise ImageDecodeError(f"CompressedImage format {fmt!r} is a depth image, not usable for RGB inference")
    buf = _buffer(msg.data)
    if buf.size == 0:
        raise ImageDecodeError(f"CompressedImage ({fmt!r}) has no data")
    if buf[:2].tobytes() == b"\xff\xd8" and _jpeg_truncated(buf.tobytes()):
        # libjpeg decodes a cut-off stream into a half-grey image with only a warning: reject it here.
        raise ImageDecodeError(f"CompressedImage ({fmt!r}): truncated JPEG, no end-of-image marker after the "
                               f"last scan in {buf.size} bytes")
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(
            f"CompressedImage ({fmt!r}): OpenCV could not decode {buf.size} bytes: {exc}") from exc
    if bgr is None:
        raise ImageDecodeError(f"CompressedImage ({fmt!r}): {buf.size} bytes are not a decodable jpeg/png "
                               "(corrupted or unsupported format)")
    _check_size(bgr.shape[1], bgr.shape[0], max_pixels, f"CompressedImage ({fmt!r})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def msg_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, allow_depth: bool = False) -> np.ndarray:
    """Image or CompressedImage (told apart by their fields) -> uint8 [H, W, 3] RGB."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_msg_to_rgb(msg, max_pixels=max_pixels)
    return image_msg_to_rgb(msg, max_pixels=max_pixels, allow_depth=allow_depth)


# ----------------------------------------------------------------------------------------------- builders

# encoding -> (channels, numpy dtype) accepted by array_to_image_msg.
_BUILD_LAYOUT = {
    "rgb8": (3, np.uint8), "bgr8": (3, np.uint8), "8UC3": (3, np.uint8),
    "rgba8": (4, np.uint8), "bgra8": (4, np.uint8), "8UC4": (4, np.uint8),
    "mono8": (1, np.uint8), "8UC1": (1, np.uint8),
    "mono16": (1, np.uint16), "16UC1": (1, np.uint16), "32FC1": (1, np.float32),
}


def _default_type(msgtype: str) -> Callable[..., Any]:
    from hcq_ros.ros.typestore import get_typestore  # late: keeps this module importable without msg files
    return get_typestore().types[msgtype]


def _message_bytes(raw: bytes, factory: Callable[..., Any]) -> Any:
    """rosbags dataclasses hold uint8[] as a numpy array; rclpy wants array.array('B') (fast path)."""
    if getattr(factory, "__msgtype__", None):
        return np.frombuffer(raw, dtype=np.uint8).copy()
    return array.array("B", raw)


def array_to_image_msg(pixels: np.ndarray, header: Any, encoding: str,
                       image_type: Callable[..., Any] | None = None) -> Any:
    """Build a sensor_msgs/Image from an array already in ``encoding``'s layout, with no padding.

    pixels: [H, W] or [H, W, C] with C and dtype matching encoding (e.g. mono8 uint8 [H, W]).
    image_type: the message class or any factory taking the Image fields as keywords (rosbags
    ``sensor_msgs/msg/Image`` class, default, or rclpy's ``sensor_msgs.msg.Image``).
    """
    if encoding not in _BUILD_LAYOUT:
        raise ValueError(f"cannot build encoding {encoding!r}; buildable: {sorted(_BUILD_LAYOUT)}")
    channels, dtype = _BUILD_LAYOUT[encoding]
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and channels == 1 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    expected_ndim = 2 if channels == 1 else 3
    if pixels.ndim != expected_ndim or (channels > 1 and pixels.shape[2] != channels) or pixels.dtype != dtype:
        want = "[H, W]" if channels == 1 else f"[H, W, {channels}]"
        raise ValueError(f"{encoding} needs {np.dtype(dtype).name} {want}, got {pixels.dtype} {list(pixels.shape)}")
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot build an empty image ({width}x{height})")
    factory = image_type or _default_type("sensor_msgs/msg/Image")
    native = np.ascontiguousarray(pixels, dtype=np.dtype(dtype).newbyteorder("="))
    return factory(header=header, height=int(height), width=int(width), encoding=encoding,
                   is_bigendian=int(sys.byteorder == "big"), step=int(width * channels * native.itemsize),
                   data=_message_bytes(native.tobytes(), factory))


def rgb_to_image_msg(rgb: np.ndarray, header: Any, encoding: str = "rgb8",
                     image_type: Callable[..., Any] | None = None) -> Any:
    """uint8 [H, W, 3] RGB -> sensor_msgs/Image in rgb8 (default), bgr8, rgba8, bgra8 or mono8."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    converters: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "rgb8": lambda x: x,
        "bgr8": lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2BGR),
        "rgba8": lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2RGBA),
        "bgra8": lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2BGRA),
        "mono8": lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2GRAY),
    }
    if encoding not in converters:
        raise ValueError(f"rgb_to_image_msg supports {sorted(converters)}, got {encoding!r}")
    return array_to_image_msg(converters[encoding](np.ascontiguousarray(rgb)), header, encoding, image_type)


def rgb_to_compressed_msg(rgb: np.ndarray, header: Any, fmt: str = "jpeg", quality: int = 90,
                          compressed_type: Callable[..., Any] | None = None) -> Any:
    """uint8 [H, W, 3] RGB -> sensor_msgs/CompressedImage (jpeg or png), labelled as image_transport does."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"CompressedImage format must be 'jpeg' or 'png', got {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {list(rgb.shape)} image as {fmt}")
    factory = compressed_type or _default_type("sensor_msgs/msg/CompressedImage")
    return factory(header=header, format=f"rgb8; {fmt} compressed bgr8",
                   data=_message_bytes(encoded.tobytes(), factory))
