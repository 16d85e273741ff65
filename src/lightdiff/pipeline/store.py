"""Where batch images land: ``<outdir>/images/<key>.png`` in a local folder or any fsspec URL.

Local folders use lightdiff.outputs.save_png (temp file, fsync, rename). A URL (s3://, gs://,
memory://, ...) gets the same PNG bytes written to a hidden temporary name and then moved onto the
final name, so a reader never sees half an image where the filesystem's move is atomic.
"""

from __future__ import annotations

import io
import json
from pathlib import Path


def has_scheme(location: str) -> bool:
    return "://" in str(location)


class Store:
    def __init__(self, location: str | Path):
        self.location = str(location).rstrip("/")
        self.is_url = has_scheme(self.location)
        if self.is_url:
            import fsspec

            self.fs, root = fsspec.core.url_to_fs(self.location)
            self.root = root.rstrip("/")
            # memory:// lives in one process: images written by another process (a worker, an actor)
            # would not be seen here, so those workers send bytes back instead (see ``process_local``).
            self.process_local = getattr(self.fs, "protocol", None) in ("memory", ("memory",))
        else:
            self.fs, self.root, self.process_local = None, self.location, False

    def path_for(self, key: str) -> str:
        return f"{self.root}/images/{key}.png" if self.is_url else str(Path(self.root) / "images" / f"{key}.png")

    def write(self, key: str, image, meta: dict) -> str:
        if not self.is_url:
            from lightdiff import outputs

            return str(outputs.save_png(image, self.path_for(key), meta))
        return self.write_bytes(key, png_bytes(image, meta))

    def write_bytes(self, key: str, data: bytes) -> str:
        final = self.path_for(key)
        if not self.is_url:
            path = Path(final)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            return final
        tmp = f"{self.root}/images/.{key}.png.tmp"
        self.fs.makedirs(f"{self.root}/images", exist_ok=True)
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, final)
        return final

    def exists(self, path: str) -> bool:
        return self.fs.exists(path) if self.is_url else Path(path).is_file()

    def url(self, path: str) -> str:
        """A path as the user would write it (with the scheme for URLs)."""
        if not self.is_url:
            return path
        return self.fs.unstrip_protocol(path)

    def keys(self) -> list[str]:
        """The keys of the images present in the store."""
        folder = f"{self.root}/images"
        if self.is_url:
            names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)] if self.fs.exists(folder) else []
        else:
            names = [p.name for p in Path(folder).glob("*.png")]
        return sorted(n[:-4] for n in names if n.endswith(".png") and not n.startswith("."))


def png_bytes(image, meta: dict) -> bytes:
    """The PNG save_png would write (same 'parameters' and 'lightdiff' chunks), in memory."""
    from PIL import PngImagePlugin

    from lightdiff.outputs import infotext

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext(meta))
    info.add_itxt("lightdiff", json.dumps(meta, ensure_ascii=False, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
