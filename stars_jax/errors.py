"""Expected errors: bad input a user can fix. The command-line tools print them as one
paragraph without a traceback (``--debug`` or ``STARS_JAX_DEBUG=1`` shows it); anything else
is a bug and keeps its traceback.

Each subclasses the builtin a caller would catch without knowing this module (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import os
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
    """Ctrl-C during a run; the message says where the run can resume from."""

    exit_code = 130


def debug_requested(argv=None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("STARS_JAX_DEBUG", "") not in ("", "0")


def report_user_errors(fn: Callable[[], object], debug: bool) -> object:
    """Runs ``fn``; a ``UserError`` ends the process with its message on stderr and exit
    status 2, a traceback only when ``debug``. Ctrl-C ends with status 130 and one line."""
    try:
        return fn()
    except UserError as err:
        if debug:
            raise
        if isinstance(err, Interrupted):
            print(err, file=sys.stderr)
        else:
            print(f"error: {err}", file=sys.stderr)
            print("(rerun with --debug or STARS_JAX_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted.", file=sys.stderr)
        raise SystemExit(130) from None
