"""Expected errors: bad input a user can fix. The command-line tools print them as one
paragraph without a traceback (``--debug`` or ``STARS_JAX_DEBUG=1`` shows it); anything else
is a bug and keeps its traceback.

Each subclasses the builtin a caller would catch without knowing this module (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix; the message says what was wrong and how to fix it."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config key or value that is not valid."""


class InputError(UserError, ValueError):
    """A data, model or checkpoint file that cannot be used."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or directory that should exist and does not."""


class MissingDependencyError(UserError, ImportError):
    """An optional package a command needs is not installed; the message names the extra."""


class WorkdirError(UserError, RuntimeError):
    """A workdir that cannot be used as asked: locked, or holding another run."""


class Interrupted(UserError):
    """Ctrl-C (or SIGTERM: a timeout, SLURM, kill) during a run; the message says where the
    run can resume from. Exit status 128 + the signal's number, as the shell reports it."""

    exit_code = 130


class DivergedError(UserError, FloatingPointError):
    """A loss went non-finite or exploded; the message names it and says how to go on.
    ``keys``: the metrics that did."""

    def __init__(self, message: str, keys: tuple[str, ...] = ()):
        super().__init__(message)
        self.keys = keys


class DiskFullError(UserError, OSError):
    """No space left where the job writes."""


def disk_full_message(where, err: OSError) -> str:
    return (
        f"No space left on the device while writing {where} ({err.strerror or err}). Nothing "
        "written before is lost: free space (or use a --workdir on another disk), then rerun "
        "the same command to start or resume."
    )


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


# The filesystem packages etils needs for bucket paths, and the extra that installs each.
_BUCKET_PACKAGES = {
    "gcsfs": ("gs://", " (or stars_jax's extra: pip install 'stars_jax[gcs]')"),
    "s3fs": ("s3://", ""),
}


def _bucket_hint(err: ImportError) -> str | None:
    """The paragraph for a bucket path used without its filesystem package, else None."""
    text = f"{err} {err.__cause__ or ''}"
    for package, (scheme, extra) in _BUCKET_PACKAGES.items():
        if package in text:
            return (
                f"A {scheme} path needs the {package} package, which is not installed: "
                f"pip install {package}{extra}, then rerun the same command; or use a local path."
            )
    return None


_signal_received: list[int] = []


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises ``KeyboardInterrupt`` while inside (main thread only), so a job that
    is told to stop saves nothing half-done and says how to resume, as after Ctrl-C."""

    def handler(signum, frame):
        _signal_received.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt_status() -> int:
    return 128 + (_signal_received[-1] if _signal_received else signal.SIGINT)


def debug_requested(argv=None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("STARS_JAX_DEBUG", "") not in ("", "0")


def report_user_errors(fn: Callable[[], object], debug: bool) -> object:
    """Runs ``fn``; a ``UserError`` ends the process with its message on stderr and exit
        status 2, a traceback only when ``debug``; so does a full disk. Ctrl-C and SIGTERM end with
    status 130 and 143 and one line (a run's own message says how to resume)."""
    try:
        with sigterm_as_interrupt():
            return fn()
    except UserError as err:
        if debug:
            raise
        if isinstance(err, Interrupted):
            print(err, file=sys.stderr)
            raise SystemExit(_interrupt_status()) from None
        print(f"error: {err}", file=sys.stderr)
        print("(rerun with --debug or STARS_JAX_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted.", file=sys.stderr)
        raise SystemExit(_interrupt_status()) from None
    except ImportError as err:
        if debug or not (hint := _bucket_hint(err)):
            raise
        print(f"error: {hint}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:
        if debug or not is_disk_full(err):
            raise
        print(f"error: {disk_full_message(err.filename or 'its files', err)}", file=sys.stderr)
        raise SystemExit(2) from None
