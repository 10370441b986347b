"""Paths that may name an object store as well as a local directory."""

from __future__ import annotations

# Object stores reached through etils.epath: no atomic create, no append, no absolute().
REMOTE_SCHEMES = ("gs://", "s3://")


def is_remote(path) -> bool:
    """Whether ``path`` (a str or path) names an object store rather than a local path."""
    return str(path).startswith(REMOTE_SCHEMES)
