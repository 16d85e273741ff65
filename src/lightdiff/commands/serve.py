"""`lightdiff serve`: the web UI, the HTTP APIs and a persistent job queue, in one command."""

NAME = "serve"
HELP = "Serve a web UI and HTTP APIs (native, AUTOMATIC1111, OpenAI Images) over a persistent job queue."


def add_arguments(p):
    from lightdiff import settings

    p.add_argument("--models", nargs="+", metavar="ID",
                   help="model ids to serve (the first is the default); default: every known model, "
                        f"default model {settings.get('default_model')}")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; anything but loopback requires an API token (default %(default)s)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--vram-budget", type=float, metavar="GB", help="behave like a card of this size")
    p.add_argument("--fast", choices=["auto", "off"], default="auto",
                   help="speed path: auto compiles and, on fp8 cards, may pick fp8 compute (lossy); "
                        "off keeps bf16 plans uncompiled")
    p.add_argument("--data-dir", help="job store, uploads and outputs (default: the lightdiff home)")
    p.add_argument("--token", help="API token required on every request (generated when binding beyond loopback)")
    p.add_argument("--devices", nargs="+", metavar="DEVICE",
                   help="one worker per device: cpu, cuda:0 ... (default: every CUDA device, else cpu)")
    p.add_argument("--allow-weights", nargs="+", metavar="SOURCE",
                   help="weight sources requests may choose, besides auto, twin and synthetic ('*' for any: "
                        "paths and hub ids; only for trusted clients)")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="allow pickle checkpoints (.ckpt/.pt/.bin), which can run code")
    p.add_argument("--allow-origin", nargs="+", default=[], metavar="ORIGIN",
                   help="other web origins allowed to submit and cancel jobs (e.g. http://localhost:3000)")
    p.add_argument("--allow-host", nargs="+", default=[], metavar="NAME",
                   help="other Host names accepted when bound to loopback (e.g. behind a proxy)")
    p.add_argument("--cpu-threads", type=int, metavar="N",
                   help="torch threads of a CPU worker (default: torch's own; 1 helps on a busy shared host)")
    p.add_argument("--eval-dir", metavar="DIR",
                   help="serve the blind rating page of an eval run (`lightdiff eval -o DIR`) at /rate/")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="runs of a job cut short by a worker crash before the job fails (default %(default)s)")


def cuda_devices() -> list[str]:
    """CUDA devices, counted in a child process so this one never imports torch or opens a CUDA context."""
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                             capture_output=True, text=True, timeout=120)
        n = int(out.stdout.strip() or 0)
    except (subprocess.SubprocessError, ValueError, OSError):
        n = 0
    return [f"cuda:{i}" for i in range(n)]


def build_config(args):
    from pathlib import Path

    from lightdiff import settings, specs
    from lightdiff.server.config import SAFE_WEIGHTS, ServerConfig, secure

    models = tuple(args.models or ())
    for m in models:
        specs.get(m)  # an unknown id fails now, naming close ones
    default = models[0] if models else settings.get("default_model")
    specs.get(default)
    devices = tuple(args.devices or ())
    if not devices:
        dev = settings.get("device")
        devices = (dev,) if dev not in ("auto", "") else tuple(cuda_devices() or ["cpu"])
    allow = tuple(dict.fromkeys(SAFE_WEIGHTS + tuple(args.allow_weights or ())))
    config = ServerConfig(
        data_dir=Path(args.data_dir).expanduser() if args.data_dir else settings.home(),
        host=args.host, port=args.port, models=models, default_model=default, token=args.token,
        devices=devices, vram_budget_gb=args.vram_budget, fast=args.fast, allow_weights=allow,
        allow_unsafe_pickle=args.allow_unsafe_pickle, allowed_origins=tuple(args.allow_origin),
        allowed_hosts=tuple(args.allow_host), max_attempts=args.max_attempts, cpu_threads=args.cpu_threads,
        eval_dir=str(Path(args.eval_dir).expanduser()) if args.eval_dir else None)
    return secure(config)


def run(args) -> int:
    import uvicorn

    from lightdiff.server.app import create_app

    from lightdiff.server.supervisor import lock_data_dir

    config, generated = build_config(args)
    lock_data_dir(config.data_dir).close()  # another server on this data dir: a clear error now, not at startup
    app = create_app(config)
    url = config.url()
    print(f"lightdiff serving on {url}  (API docs: {url}docs)", flush=True)
    print(f"  data: {config.data_dir}; workers: {', '.join(config.devices)}; default model: {config.default_model}",
          flush=True)
    if config.token:
        note = "generated for this run; pass --token to keep one" if generated else "given with --token"
        print(f"  API token ({note}): {config.token}", flush=True)
        print(f"  web UI with the token: {url}#token={config.token}", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
    return 0
