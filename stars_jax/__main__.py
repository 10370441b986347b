"""``python -m stars_jax``: the command-line tools, one line each (``--help`` on any of them
lists its flags)."""

TOOLS = (
    ("stars_jax.main", "the main job: synthesis + distillation into a spiking student"),
    (
        "stars_jax.convert",
        "a PyTorch teacher (checkpoint, torchvision/NAME, --torch_module) as a model directory",
    ),
    ("stars_jax.teacher", "train a config's teacher on its real data"),
    ("stars_jax.evaluate", "top-1 / top-5 of a model directory on a labelled image set"),
    ("stars_jax.export", "a distilled student as NIR"),
    ("stars_jax.export_bank", "a run's synthetic images as a transfer set"),
    ("stars_jax.sweep", "ablations: variants x seeds as main jobs, then paired statistics"),
)


def usage() -> str:
    from stars_jax import __version__
    from stars_jax.cli import installed_configs

    width = max(len(m) for m, _ in TOOLS)
    lines = [f"stars_jax {__version__}: data-free ANN-to-SNN distillation (STARS). Tools:"]
    lines += [f"  python -m {m:<{width}}  {what}" for m, what in TOOLS]
    lines.append(
        f"Configs: configs/NAME.py in a checkout, else the installed copies in "
        f"{installed_configs()} (--config configs/default.py finds them)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(usage())
