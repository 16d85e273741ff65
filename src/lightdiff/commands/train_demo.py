"""`lightdiff train-demo`: train lightdiff's demo model (minutes on one GPU; --smoke checks it on a CPU)."""

NAME = "train-demo"
HELP = ("Train the built-in demo model (small SD1.5-family, procedural shape scenes) into a diffusers "
        "folder with a canny ControlNet, loss curves and a prompt-adherence eval.")


def add_arguments(p):
    from lightdiff.demo.train import add_arguments as train_arguments  # torch-free

    train_arguments(p)


def run(args) -> int:
    from lightdiff.demo import train

    summary = train.run(train.config_from_args(args))
    return 1 if summary["errors"] else 0  # the weights are saved either way; summary.json names the failure
