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
    # The shipped teachers (stars_jax/assets): model directories, 81 kB (Fashion-MNIST) and
    # 708 kB (CIFAR-10 on a CPU).
    package_data={"stars_jax.assets": ["teachers/*/model.json", "teachers/*/variables.msgpack"]},
    # The config files, for installs that are not a checkout: under sys.prefix.
    data_files=[
        ("share/stars_jax/configs", [str(p) for p in sorted(Path("configs").glob("*.py"))])
    ],
    license="Apache-2.0",
    # jax and flax of the range below need Python 3.11; CI tests 3.11.
    python_requires=">=3.11",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    # Lower bounds: the versions CI installs and tests (jax 0.10.2, flax 0.12.8, optax 0.2.8,
    # orbax-checkpoint 0.12.8, ml-collections 1.1.0, absl-py 2.5.1, etils 1.15.0, numpy 2.4.6,
    # scipy 1.17.1, pillow 13.0.0); upper bounds: the next release line, untested.
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "ml-collections>=1.1,<2",
        "absl-py>=2.5,<3",
        "etils[epath]>=1.15,<2",  # paths that may be gs:// buckets (workdirs, checkpoints)
        "numpy>=2.4,<3",
        "scipy>=1.17,<2",  # Student-t intervals in stars_jax.sweep (jax depends on it too)
        "pillow>=13.0,<14",
    ],
    extras_require={
        # Only to read PyTorch checkpoints and trace CNNs (stars_jax.convert); the CPU build is
        # enough. Tested with 2.13.0+cpu.
        "torch": ["torch>=2.13,<2.14"],
        # convert --arch torchvision/NAME: the torchvision release paired with that torch.
        "torchvision": ["torch>=2.13,<2.14", "torchvision>=0.28,<0.29"],
        "tfds": ["tensorflow-datasets>=4.9"],
        # TensorBoard event files without TensorFlow (stars_jax.metrics.Writer), and the viewer
        # (`tensorboard --logdir WORKDIR`); the viewer is not part of the tests.
        "tensorboard": ["tensorboardX>=2.6,<3", "tensorboard>=2.16"],
        # gs:// workdirs and checkpoints through etils.epath (not tested here: no bucket).
        "gcs": ["gcsfs>=2024.2"],
        # NIR export (python -m stars_jax.export); h5py comes with nir.
        "nir": ["nir>=1.0.8,<2"],
        # The independent NIR consumer tests/test_export_nir.py runs exported graphs in;
        # snntorch's wheel does not declare nirtorch, which its NIR importer needs.
        "nir-check": ["nir>=1.0.8,<2", "snntorch>=1.0,<1.1", "nirtorch>=2.0,<3"],
        # benchmarks/plot_curves.py (accuracy against KD steps as a PNG).
        "plot": ["matplotlib>=3.8"],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # pytest.ini runs the test files on every core (-n auto)
            "ruff>=0.6",
            "chex>=0.1.90",
            "tensorboardX>=2.6",
            "nir>=1.0.8,<2",
            "snntorch>=1.0,<1.1",
            "nirtorch>=2.0,<3",
            "matplotlib>=3.8",  # tests/test_plot_curves.py
            "torchvision>=0.28,<0.29",  # tests/test_convert_torch.py (skipped without it)
        ],
    },
)
