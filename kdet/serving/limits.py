"""Resource limits of `kdet serve` and the image-header check that enforces the pixel limit before decoding.

    Limits(...)                           every limit of one server (defaults = `kdet serve`'s defaults)
    image_header(data)                    (format, height, width, frames) read from the first bytes, no decoding
    check_image_inputs(signature, inputs, limits)
                                          refuse encoded images that are undecodable or too large, before the graph
    run_checked(signature, inputs, limits)  check_image_inputs, then core.run_signature (what both wire formats call)

A 0.79 MB PNG can claim 16000 x 16000 pixels: decoding it takes 768 MB and seconds, and batches multiply that. The
headers of PNG, JPEG, GIF (every frame: `tf.io.decode_image` decodes all of them even when it keeps the first), BMP
and WebP state the size, so a request is answered 400 from its first bytes. JPEG XL is refused: its size header is a
bit-packed field this check does not read, and an unchecked size is what the limit exists to prevent.
"""
import struct
from dataclasses import dataclass

from kdet.serving.core import check_inputs, invalid_argument, run_signature


@dataclass(frozen=True)
class Limits:
    """Limits of one server; every field is a `kdet serve` option (see `server.main`).

    max_body_bytes: largest REST body or gRPC message; larger REST bodies get 413 before they are read.
    max_image_pixels: largest encoded image (height x width x frames) a `*_bytes` input may hold.
    request_timeout: seconds for a request's headers and body to arrive once its first line has (then 408).
    idle_timeout: seconds a connection may stay open without starting a request (then it is closed).
    rest_threads: REST handler threads; further connections wait in the listen queue until one is free.
    grpc_workers: gRPC handler threads; up to `grpc_queue` further calls wait, more get RESOURCE_EXHAUSTED.
    """
    max_body_bytes: int = 16 * 2 ** 20
    max_image_pixels: int = 40_000_000
    request_timeout: float = 30.0
    idle_timeout: float = 15.0
    rest_threads: int = 32
    grpc_workers: int = 8
    grpc_queue: int = 256

    def __post_init__(self):
        for name in ("max_body_bytes", "max_image_pixels", "rest_threads", "grpc_workers", "grpc_queue"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("request_timeout", "idle_timeout"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)}")


def _png(data):
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("truncated PNG header")
    width, height = struct.unpack(">II", data[16:24])
    return height, width, 1


# JPEG start-of-frame markers (SOF0..SOF15 without DHT C4, JPG C8, DAC CC) carry precision, height, width.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data):
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise ValueError(f"corrupt JPEG marker at byte {at}")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in _SOF:
            if at + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return height, width, 1
        if marker == 0xDA or length < 2:  # scan data before any frame header
            raise ValueError("JPEG has no frame header before its scan data")
        at += 2 + length
    raise ValueError("truncated JPEG: no frame header")


def _gif(data):
    """GIF: the logical screen size times the number of frames (image descriptors), found by walking the blocks."""
    if len(data) < 13:
        raise ValueError("truncated GIF header")
    width, height, flags = struct.unpack("<HHB", data[6:11])
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0

    def skip_sub_blocks(at):
        while at < len(data) and data[at]:
            at += data[at] + 1
        return at + 1

    while at < len(data):
        kind = data[at]
        if kind == 0x3B:  # trailer
            break
        if kind == 0x21:  # extension: label, then sub-blocks
            at = skip_sub_blocks(at + 2)
        elif kind == 0x2C:  # image descriptor (+ local colour table), LZW code size, sub-blocks
            if at + 10 > len(data):
                break
            frames += 1
            local = data[at + 9]
            at += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            at = skip_sub_blocks(at + 1)
        else:
            raise ValueError(f"corrupt GIF block 0x{kind:02x} at byte {at}")
    return height, width, max(frames, 1)


def _bmp(data):
    if len(data) < 26:
        raise ValueError("truncated BMP header")
    if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(height), abs(width), 1


def _webp(data):
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return height & 0x3FFF, width & 0x3FFF, 1
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1, 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1, 1
    raise ValueError("truncated or unknown WebP header")


def image_header(data):
    """(format, height, width, frames) of encoded image bytes, from the header only.

    Raises ValueError naming the problem for bytes that are no image `tf.io.decode_image` reads, a truncated header,
    or JPEG XL (whose size is not read here).
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ("PNG", *_png(data))
    if data[:3] == b"\xff\xd8\xff":
        return ("JPEG", *_jpeg(data))
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ("GIF", *_gif(data))
    if data[:2] == b"BM":
        return ("BMP", *_bmp(data))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("WebP", *_webp(data))
    if data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        raise ValueError("JPEG XL is not accepted by kdet serve (its size cannot be checked before decoding)")
    if not data:
        raise ValueError("empty bytes")
    raise ValueError(f"not a JPEG, PNG, GIF, BMP or WebP image (first bytes: {data[:8].hex(' ')})")


def _megapixels(pixels):
    return f"{pixels / 1e6:.1f} MP"


def check_image_inputs(signature, inputs, limits):
    """Check every encoded image of the `*_bytes` string inputs before the signature decodes them.

    Args:
        signature: the `core.Signature` to be called.
        inputs: {key: np.ndarray} of the request, e.g. {"image_bytes": object [B] of bytes}.
        limits: the server's `Limits`.
    Raises INVALID_ARGUMENT (HTTP 400) naming the input, the item and the problem: undecodable bytes, or more
    pixels than `limits.max_image_pixels` (with the image's size and the option that sets the limit).
    """
    for key, spec in signature.inputs.items():
        if spec.dtype.name != "string" or not key.endswith("bytes") or key not in inputs:
            continue
        for index, data in enumerate(inputs[key].reshape(-1).tolist()):
            try:
                kind, height, width, frames = image_header(bytes(data))
            except ValueError as error:
                raise invalid_argument(f"input '{key}' item {index}: cannot decode the image: {error}") from None
            pixels = height * width * frames
            if pixels > limits.max_image_pixels:
                size = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
                raise invalid_argument(
                    f"input '{key}' item {index}: the {kind} image is {size} = {_megapixels(pixels)}, more than this "
                    f"server's limit of {_megapixels(limits.max_image_pixels)} (kdet serve --max-image-pixels)")
            if pixels == 0:
                raise invalid_argument(f"input '{key}' item {index}: cannot decode the image: its {kind} header "
                                       f"says {width}x{height} pixels")


def run_checked(signature, inputs, limits, output_filter=()):
    """`core.run_signature` after the request's encoded images passed `check_image_inputs` (same args, same result)."""
    check_inputs(signature, inputs)  # dtypes first: a number array must not be read as image bytes
    check_image_inputs(signature, inputs, limits)
    return run_signature(signature, inputs, output_filter)
