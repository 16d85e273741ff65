"""Continue the x2 ControlNet on the CPU (ControlNet-only run of the repo's trainer)."""
import sys
from lightdiff.demo.train import TrainConfig, run
minutes, batch, out = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfg = TrainConfig(out=out, init="tmp/s8/x2", minutes=minutes, seed=9, device="cpu", split=(0.0, 0.0, 1.0),
                  pair_layout="halves", scenes=int(sys.argv[4]), workers=1, cn_batch=batch, eval_n=10,
                  eval_controlnet_n=10, eval_guidance=(7.5,), log_every=10, cpu_threads=2)
run(cfg, argv=["tmp/s8/cn_cpu.py", *sys.argv[1:]])
