"""CPU experiment: fine-tune the shipped UNet + text encoder with the grounding loss (not shipped)."""
import sys
from lightdiff.demo.train import TrainConfig, run
minutes, weight, out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
cfg = TrainConfig(out=out, init="tmp/s8/x3", minutes=minutes, seed=11, device="cpu", split=(0.0, 1.0, 0.0),
                  scenes=4000, workers=1, unet_batch=32, unet_lr=1e-4, unet_warmup=50, grounding_weight=weight,
                  eval_n=10, eval_controlnet_n=10, eval_guidance=(7.5,), log_every=10, cpu_threads=2)
run(cfg, argv=["tmp/s8/ground_cpu.py", *sys.argv[1:]])
