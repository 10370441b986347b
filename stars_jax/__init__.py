"""stars_jax: data-free ANN-to-SNN distillation (STARS) in JAX/Flax."""

__version__ = "0.1.0"
