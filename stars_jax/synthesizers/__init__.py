"""One module per synthesizer; ``stars_jax.synthesis`` is their registry."""
