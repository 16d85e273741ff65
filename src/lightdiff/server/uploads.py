"""Uploaded images: checked before anything is queued, stored once by content hash.

A request's image fields must carry the image itself (a data: URI or base64; never a path: the
server reads no file a client names). Before any pixel is decoded, the size in bytes and the
canvas size from the header are checked (a small file can declare a huge canvas: a decompression
bomb); only PNG, JPEG and WebP are opened. The image is stored re-encoded as PNG under
uploads/<sha256>.png and the request keeps ``upload:<sha256>``; the worker turns that back into
a data: URI for the workflow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from lightdiff.errors import InvalidRequest, LightdiffError

FORMATS = ("PNG", "JPEG", "WEBP")
REF_PREFIX = "upload:"
_DATA_URI = re.compile(r"^data:image/(png|jpeg|jpg|webp);base64,", re.I)
_SHA = re.compile(r"^[0-9a-f]{64}$")
_HINT = "Send a PNG, JPEG or WebP image as base64 or a data:image/png;base64,... URI."


class ImageTooLarge(LightdiffError):
    code = "image_too_large"
    http_status = 413


class InvalidImage(LightdiffError):
    code = "invalid_image"
    http_status = 422


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:30] + f"... ({len(value)} characters)")


def bytes_from_field(field: str, value, limits: Limits) -> bytes:
    """A data: URI or base64 string -> bytes. Paths and anything else are refused without touching disk."""
    if not isinstance(value, str) or not value:
        raise InvalidImage(f"{field} must be a non-empty string holding an image.", _HINT, details={"field": field})
    m = _DATA_URI.match(value)
    text = value[m.end():] if m else value
    if value.startswith("data:") and not m:
        raise InvalidImage(f"{field} is a data: URI of a type other than PNG, JPEG or WebP.", _HINT,
                           details={"field": field})
    if len(text) * 3 // 4 > limits.max_bytes:
        raise ImageTooLarge(f"{field} holds about {len(text) * 3 // 4} bytes, over the limit of {limits.max_bytes}.",
                            "Send a smaller image (resize or compress it).", details={"field": field})
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{field}={_short(value)} is not base64 image data (file paths are not accepted).",
                           _HINT, details={"field": field}) from None


def check_image(field: str, data: bytes, limits: Limits):
    """Bytes -> a loaded PIL image, refusing other formats, oversized files and canvases first."""
    from PIL import Image

    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"{field} is {len(data)} bytes, over the limit of {limits.max_bytes}.",
                            "Send a smaller image.", details={"field": field})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=list(FORMATS))  # reads the header only
            w, h = im.size
            if w * h > limits.max_pixels or w < 1 or h < 1:
                raise ImageTooLarge(f"{field} declares {w}x{h} = {w * h} pixels, over the limit of "
                                    f"{limits.max_pixels}.", "Resize the image before sending it.",
                                    details={"field": field})
            im.load()
    except LightdiffError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{field} was refused as a decompression bomb ({e}).", "Send an ordinary image.",
                            details={"field": field}) from None
    except Exception as e:  # PIL raises many types for hostile files; every one means "not an image we take"
        raise InvalidImage(f"{field} could not be read as a PNG, JPEG or WebP image ({type(e).__name__}).",
                           _HINT, details={"field": field}) from None
    return im


def to_png(im) -> bytes:
    if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
        im = im.convert("RGBA")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def store(uploads_dir: Path, png: bytes) -> str:
    """Write once by content hash (atomic rename); returns the request reference."""
    sha = hashlib.sha256(png).hexdigest()
    path = Path(uploads_dir) / f"{sha}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{sha}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(png)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return REF_PREFIX + sha


def is_ref(value) -> bool:
    return isinstance(value, str) and value.startswith(REF_PREFIX) and bool(_SHA.match(value[len(REF_PREFIX):]))


def path_of(uploads_dir: Path, sha: str) -> Path | None:
    """The stored file for a hash, or None. Only 64 hex digits are accepted: no path from a client."""
    if not _SHA.match(sha):
        return None
    path = Path(uploads_dir) / f"{sha}.png"
    return path if path.is_file() else None


def resolve_refs(request: dict, uploads_dir: Path) -> dict:
    """upload:<sha> values -> data: URIs (in the worker, just before the workflow reads them)."""
    out = dict(request)
    for key, value in request.items():
        if is_ref(value):
            path = path_of(uploads_dir, value[len(REF_PREFIX):])
            if path is None:
                raise InvalidRequest(key, f"{key}: the uploaded image {value[:20]}... is missing from the server.",
                                     "Submit the job again with the image.")
            out[key] = data_uri(path.read_bytes())
    return out
