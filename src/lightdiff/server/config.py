"""Server settings: one frozen object built by `lightdiff serve` (or a test) and shared by every part.

Nothing here imports torch; the worker process rebuilds the same object from JSON.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# Requests may choose only among these weight sources unless the operator allows more: any other
# value is a path or hub id, which would let a client make the server read arbitrary files.
SAFE_WEIGHTS = ("auto", "twin", "synthetic")


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7860
    models: tuple[str, ...] = ()  # served model ids; empty: every known spec
    default_model: str = "tiny-sd15"
    token: str | None = None  # required on every API request when set
    devices: tuple[str, ...] = ("cpu",)  # one worker process per entry
    vram_budget_gb: float | None = None
    fast: str = "auto"  # the engine's speed path: auto (compiled, fp8 compute on fp8 cards) or off (bf16 plans)
    cpu_threads: int | None = None  # torch threads of a CPU worker (1 avoids thread thrashing on a busy host)
    allow_weights: tuple[str, ...] = SAFE_WEIGHTS  # "*" allows any source (paths, hub ids)
    allow_unsafe_pickle: bool = False
    allowed_origins: tuple[str, ...] = ()  # extra origins allowed to POST (besides the server's own)
    allowed_hosts: tuple[str, ...] = ()  # extra Host header names accepted when bound to loopback
    max_body_bytes: int = 40 * 2**20
    max_upload_bytes: int = 20 * 2**20
    max_upload_pixels: int = 4096 * 4096
    max_queued: int = 10_000
    max_attempts: int = 3  # runs of one job cut short by a crash, kill or restart before it fails
    lease_s: float = 30.0  # a claim not renewed for this long is taken to be dead
    poll_s: float = 0.1  # how often an idle worker looks for work
    sync_timeout_s: float = 3600.0  # how long A1111/OpenAI calls wait for their job
    eval_dir: str | None = None  # an eval run (`lightdiff eval -o DIR`) whose blind rating page is served at /rate/
    extra: dict = field(default_factory=dict)

    @property
    def outputs_dir(self) -> Path:
        return Path(self.data_dir) / "outputs"

    @property
    def uploads_dir(self) -> Path:
        return Path(self.data_dir) / "uploads"

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "jobs.db"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    def to_json(self) -> str:
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "ServerConfig":
        d = json.loads(text)
        d["data_dir"] = Path(d["data_dir"])
        for key in ("models", "devices", "allow_weights", "allowed_origins", "allowed_hosts"):
            d[key] = tuple(d[key])
        return cls(**d)

    def with_changes(self, **kw) -> "ServerConfig":
        return replace(self, **kw)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secure(config: ServerConfig) -> tuple[ServerConfig, bool]:
    """Binding beyond loopback needs a token: make one when none was given. Returns (config, generated)."""
    if config.loopback or config.token:
        return config, False
    return config.with_changes(token=secrets.token_urlsafe(24)), True
