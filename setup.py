"""stars_jax: data-free ANN-to-SNN distillation (STARS) in JAX/Flax."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "stars_jax/__init__.py").read_text())[1]

setup(
    name="stars_jax",
    version=VERSION,
    description="Data-free ANN-to-SNN knowledge distillation with STARS, in JAX/Flax.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["stars_jax", "stars_jax.*"]),
    # The embedded default's teacher (stars_jax/assets): a model directory, 81 kB.
    package_data={"stars_jax.assets": ["teachers/*/model.json", "teachers/*/variables.msgpack"]},
    # The config files, for installs that are not a checkout: under sys.prefix.
    data_files=[
        ("share/stars_jax/configs", [str(p) for p in sorted(Path("configs").glob("*.py"))])
    ],
    python_requires=">=3.10",
    install_requires=[
        # Tested with jax 0.10.2 (CPU); flax/optax/orbax/chex releases of the same era.
        "jax>=0.10,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "etils[epath]>=1.5",  # paths that may be gs:// buckets (workdirs, checkpoints)
        "numpy>=1.26",
        "scipy>=1.11",  # Student-t intervals in stars_jax.sweep (jax depends on it too)
        "pillow>=10.0",
    ],
    extras_require={
        # Only to read PyTorch checkpoints (stars_jax.convert); the CPU build is enough. Any
        # release with torch.load(weights_only=True); tested with 2.13.0+cpu (the cap keeps
        # pip on that local CPU wheel here instead of a newer CUDA build).
        "torch": ["torch>=2.2,<2.14"],
        "tfds": ["tensorflow-datasets>=4.9"],
        # TensorBoard event files without TensorFlow (stars_jax.metrics.Writer).
        "tensorboard": ["tensorboardX>=2.6"],
        # NIR export (python -m stars_jax.export); h5py comes with nir.
        "nir": ["nir>=1.0.8,<2"],
        # The independent NIR consumer tests/test_export_nir.py runs exported graphs in;
        # snntorch's wheel does not declare nirtorch, which its NIR importer needs.
        # benchmarks/plot_curves.py (accuracy against KD steps as a PNG).
        "plot": ["matplotlib>=3.8"],
        "nir-check": ["nir>=1.0.8,<2", "snntorch>=1.0,<1.1", "nirtorch>=2.0,<3"],
        "test": [
            "pytest>=8",
            "ruff>=0.6",
            "chex>=0.1.90",
            "tensorboardX>=2.6",
            "nir>=1.0.8,<2",
            "snntorch>=1.0,<1.1",
            "nirtorch>=2.0,<3",
            "matplotlib>=3.8",  # tests/test_plot_curves.py
        ],
    },
)
