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
    python_requires=">=3.10",
    install_requires=[
        # Tested with jax 0.10.2 (CPU); flax/optax/orbax/chex releases of the same era.
        "jax>=0.10,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.90",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        "scipy>=1.11",  # Student-t intervals in stars_jax.sweep (jax depends on it too)
        "pillow>=10.0",
    ],
    extras_require={
        # Only to read PyTorch checkpoints (stars_jax.convert); the CPU build is enough.
        "torch": ["torch==2.13.0"],
        "tfds": ["tensorflow-datasets>=4.9"],
        "test": ["pytest>=8", "ruff>=0.6"],
    },
)
