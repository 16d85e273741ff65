"""`lightdiff env`: versions, GPUs, driver and memory; the same stamp every benchmark row carries."""

NAME = "env"
HELP = "Print lightdiff, Python, torch, CUDA, diffusers and transformers versions, GPUs, driver and memory."


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print the stamp as JSON")


def run(args) -> int:
    import json

    from lightdiff.runtime.device import env_stamp

    stamp = env_stamp()
    if args.json:
        print(json.dumps(stamp, indent=2))
        return 0
    for key in ("lightdiff", "python", "platform", "torch", "cuda", "diffusers", "transformers", "accelerate",
                "torchao", "driver"):
        print(f"{key:13} {stamp.get(key) or '-'}")
    if not stamp["gpus"]:
        print("gpu           none visible (CPU only)")
    for g in stamp["gpus"]:
        print(f"gpu {g['index']:<9} {g['name']}  total {g['total_gb']} GB, free {g['free_gb']} GB, "
              f"compute capability {g['capability']}")
    ram = stamp["host_ram"]
    print(f"host ram      total {ram['total_gb']} GB, available {ram['available_gb']} GB")
    return 0
