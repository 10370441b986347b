"""Shared pytest fixtures, and one persistent XLA compilation cache for the whole session.

Many tests (and the subprocesses they start, through the environment) compile the same tiny
steps; the cache turns each repeat compilation, seconds on a CPU, into a file read.
"""

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="stars_jax_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_configure(config):
    import jax  # After the variables above, which JAX reads when it is imported.

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``shared/`` folder beside the repo (data, teachers); skips the test when absent."""
    path = Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        pytest.skip(f"no shared folder at {path} (expected beside the repo checkout)")
    return path


@pytest.fixture(scope="module")
def nets():
    """A tiny teacher and student with their variables (``tests.synth_nets``)."""
    from tests.synth_nets import tiny_nets

    return tiny_nets()
