"""Image inputs of workflows: one convention for every image field, decoded safely.

An image field (``init_image``, ``mask_image``, ``control_image``) is a string holding one of:
- a path to a PNG, JPEG or WebP file;
- a ``data:image/png;base64,...`` URI (also image/jpeg, image/webp);
- a bare base64 string of such a file.
A path is tried first (a short string naming an existing file), then base64.

Decoding refuses what is not an image, formats other than PNG/JPEG/WebP, and images above
``MAX_PIXELS`` before their pixels are read (a small file can declare a huge canvas: a
decompression bomb). Every refusal is an InvalidRequest naming the field.

Result metadata keep the request, so an image can be reproduced from its PNG; base64 inputs larger
than ``INLINE_LIMIT`` are replaced there by ``sha256:<hex>`` (PNG text chunks are read back only up
to 1 MB), and reproducing such an image asks for the input again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from pathlib import Path
from typing import Annotated

from pydantic import Field

from lightdiff.errors import InvalidRequest

IMAGE_FIELDS = ("init_image", "mask_image", "control_image")
FORMATS = {"PNG", "JPEG", "WEBP"}
MAX_PIXELS = 8192 * 8192  # the largest width x height a request may ask for
MAX_BYTES = 48 * 2**20  # encoded file size
INLINE_LIMIT = 256 * 1024  # base64 characters kept in result metadata per field
_DATA_URI = re.compile(r"^data:(image/(?:png|jpeg|jpg|webp));base64,(.*)$", re.S)
_MAX_PATH_CHARS = 4096
_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# A request field holding an image (path, data URI or base64); the length cap keeps a request small
# enough to validate before any decoding.
ImageInput = Annotated[str, Field(min_length=1, max_length=MAX_BYTES * 4 // 3 + 64)]

_HINT = "Give a PNG, JPEG or WebP file: a path, a data:image/png;base64,... URI or a base64 string."


def _short(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:40] + f"... ({len(value)} characters)")


def _bytes_of(value: str, field: str, base_dir: Path | None, allow_paths: bool) -> bytes:
    if value.startswith("sha256:"):
        raise InvalidRequest(field, f"{field} was not stored with the request (only its hash {value[:19]}...).",
                             f"Pass the original image again, e.g. --set {field}=PATH.")
    m = _DATA_URI.match(value)
    if m:
        return _b64(m.group(2), field)
    if len(value) < _MAX_PATH_CHARS and "\n" not in value:
        path = Path(value).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if path.is_file():
            if not allow_paths:
                raise InvalidRequest(field, f"{field} names a file ({_short(value)}); paths are not accepted here.",
                                     "Send the image itself as base64 or a data: URI.")
            if path.stat().st_size > MAX_BYTES:
                raise InvalidRequest(field, f"{field} file {path} is {path.stat().st_size} bytes, over {MAX_BYTES}.",
                                     "Give a smaller image.")
            return path.read_bytes()
    try:
        return _b64(value, field)
    except InvalidRequest:
        # base64 may start with "/" (JPEG's does), so only text that is not base64 reads as a missing file
        if value.startswith(("/", "./", "../", "~")) or Path(value).suffix.lower() in _SUFFIXES:
            raise InvalidRequest(field, f"{field}: there is no file {_short(value)}.",
                                 "Check the path. " + _HINT) from None
        raise


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(field, f"{field}={_short(text)} is neither an existing file nor valid base64.",
                             _HINT) from None


def decode(data: bytes, field: str):
    """Bytes -> a loaded PIL image, refusing other formats and oversized canvases before reading pixels."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=sorted(FORMATS))
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InvalidRequest(field, f"{field} is {w}x{h} = {w * h} pixels, over the limit of {MAX_PIXELS}.",
                                     "Resize the image first.")
            im.load()
            return ImageOps.exif_transpose(im)  # phone photos store their rotation in EXIF
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # Pillow's own, larger limit
        raise InvalidRequest(field, f"{field} declares more pixels than allowed ({e}).",
                             "Resize the image first.") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InvalidRequest(field, f"{field} could not be decoded as an image ({type(e).__name__}: {e}).",
                             _HINT) from None


def load(value: str, field: str, mode: str = "RGB", base_dir: Path | None = None, allow_paths: bool = True):
    """An image field's value -> a PIL image in ``mode`` ("RGB" or "L")."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(field, f"{field} is empty.", _HINT)
    im = decode(_bytes_of(value, field, base_dir, allow_paths), field)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels must not keep whatever colour they hide: a picture shows them white (as
        # editors do); a mask shows them black (keep), so white strokes on a clear layer mark the repaint.
        from PIL import Image

        rgba = im.convert("RGBA")
        background = (0, 0, 0, 255) if mode == "L" else (255, 255, 255, 255)
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba)
    return im.convert(mode)


def fit(image, width: int, height: int, field: str, warnings_out: list[str], resample: str = "LANCZOS"):
    """Resize to the working size (AUTOMATIC1111's "just resize"), saying so when it changes."""
    from PIL import Image

    if image.size == (width, height):
        return image
    warnings_out.append(f"{field} is {image.width}x{image.height}; it was resized to {width}x{height}.")
    return image.resize((width, height), getattr(Image.Resampling, resample))


def snap_size(image_size: tuple[int, int], multiple: int, min_size: int) -> tuple[int, int]:
    """The working size for an image input when width/height are not given: its own size, rounded
    down to the family's multiple."""
    return tuple(max(min_size, (v // multiple) * multiple) for v in image_size)


def describe(image) -> dict:
    return {"width": image.width, "height": image.height,
            "sha256": hashlib.sha256(image.tobytes()).hexdigest()}


def compact_request(request: dict) -> dict:
    """The request as kept in image metadata: large inline images become their hash (see module doc),
    relative file paths become absolute (so the PNG reproduces from any folder)."""
    out = dict(request)
    for name in IMAGE_FIELDS:
        value = out.get(name)
        if not isinstance(value, str):
            continue
        if len(value) > INLINE_LIMIT:
            out[name] = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
        elif len(value) < _MAX_PATH_CHARS and not value.startswith("data:") and Path(value).expanduser().is_file():
            out[name] = str(Path(value).expanduser().resolve())
    return out
