"""What the command-line tools share with the main job (``stars_jax.main``): absl flags,
``--debug``, expected errors as one paragraph with exit status 2, a bad command line as one
line with exit status 2, and ``--helpfull`` (every flag) with exit status 0.

Each tool defines its flags in a function ``define_flags(fv)`` and runs from the parsed
flags in ``run(fv)``. ``python -m`` defines them in absl's global registry, where ``--help``
and ``--helpfull`` find them; ``main(argv)`` (for tests and scripts) in a fresh registry, so
that importing several tools in one process never clashes and each call starts from the
defaults.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags, logging

from stars_jax import errors

Define = Callable[[flags.FlagValues], None]
DEBUG_HELP = "Show tracebacks of expected errors too (or STARS_JAX_DEBUG=1)."


def installed_configs() -> Path:
    """Where ``pip install`` puts ``configs/*.py`` (setup.py's data_files):
    ``<prefix>/share/stars_jax/configs``."""
    return Path(sysconfig.get_path("data")) / "share" / "stars_jax" / "configs"


def _installed_config(value: str) -> str:
    """``FILE[:ARG]`` with a FILE that does not exist here replaced by the installed config of
    its name (``configs/default.py`` or ``default.py`` -> the installed ``default.py``)."""
    path, sep, arg = value.partition(":")
    if not path or Path(path).exists():
        return value
    installed = installed_configs() / Path(path).name
    return f"{installed}{sep}{arg}" if installed.is_file() else value


def with_installed_configs(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--config`` looked up in the installed configs when the path is absent,
    so ``--config configs/default.py`` works after a plain (non-editable) ``pip install``."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config="):
            out[i] = "--config=" + _installed_config(a[len("--config=") :])
        elif a == "--config" and i + 1 < len(out):
            out[i + 1] = _installed_config(out[i + 1])
    return out


def _config_file(argv) -> tuple[str, str | None] | None:
    """The ``--config`` flag's file and argument, from the raw command line."""
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--config=") else None
        if a == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        if value:
            path, _, arg = value.partition(":")
            return path, arg or None
    return None


def _unknown_config_key(argv) -> str | None:
    """The message for an unknown ``--config.KEY`` (which ml_collections reports as a chain
    of tracebacks), naming the nearest valid keys; None if every key is known."""
    from stars_jax import validate
    from stars_jax.config import load_config_file

    found = _config_file(argv)
    if not found:
        return None
    try:
        config = load_config_file(*found)
    except Exception as load_err:  # the file itself is broken
        return f"Cannot load the config file {found[0]}: {load_err}"
    known = validate.flatten(config)
    for a in argv:
        m = re.match(r"--config\.([\w.]+)(=|$)", a)
        key = m and m.group(1)
        if key and key not in known and not any(k.startswith(key + ".") for k in known):
            return validate.unknown_key_message(key, config)
    return None


def check_config_path(argv) -> None:
    """A ``--config`` file that does not exist, as one line (ml_collections reports it lazily,
    as a chain of tracebacks from wherever the config is first read)."""
    found = _config_file(argv)
    if found and not os.path.isfile(found[0]):
        raise errors.ConfigError(
            f"The config file {found[0]!r} does not exist (looked from {os.getcwd()}); give "
            "a path to a file such as configs/default.py, with its argument after a colon "
            "where it takes one (configs/tiny.py:/path/to/images)."
        )


def flag_error_message(argv, err: Exception) -> str:
    """One line for a command line the flags cannot parse."""
    if isinstance(err, errors.ConfigError):
        return str(err)
    return _unknown_config_key(argv) or (str(err).splitlines() or [type(err).__name__])[0]


def _check_no_args(rest: Sequence[str]) -> None:
    if len(rest) > 1:
        raise flags.Error(f"Unexpected arguments: {list(rest[1:])} (every input is a --flag).")


def parse(define: Define, argv: Sequence[str] | None, prog: str) -> flags.FlagValues:
    """``argv`` parsed into a fresh registry, for ``main(argv)``: with or without the program
    name first (``["--model", d]`` works). A bad command line raises ``ConfigError``."""
    argv = with_installed_configs(sys.argv if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        argv = [prog, *argv]
    fv = flags.FlagValues()
    define(fv)
    try:
        _check_no_args(fv(argv))
    except flags.Error as err:
        raise errors.ConfigError(flag_error_message(argv, err)) from err
    return fv


def parse_or_exit(argv: list[str], usage: str) -> list[str]:
    """absl's global flags from ``argv``; a bad command line prints one line (and the usage)
    and exits with status 2 unless ``--debug``; ``--help``/``--helpfull`` exit with 0."""
    argv = with_installed_configs(argv)
    try:
        check_config_path(argv)
        rest = flags.FLAGS(argv)
        _check_no_args(rest)
        return rest
    except SystemExit as done:  # absl printed the asked-for help, and exits 1 after it.
        raise SystemExit(0 if done.code == 1 else done.code) from None
    except BrokenPipeError:  # the help piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except Exception as err:  # flags.Error, and what ml_collections raises for a bad key
        if errors.debug_requested(argv):
            raise
        print(f"error: {flag_error_message(argv, err)}", file=sys.stderr)
        print(f"Usage: {usage}  (--helpfull lists every flag)", file=sys.stderr)
        sys.exit(2)


def run_main(define: Define, run: Callable[[flags.FlagValues], object], usage: str) -> None:
    """The ``python -m`` entry point: ``run`` on the command line's flags, under absl's
    ``app.run``, with expected errors as one paragraph (``errors.report_user_errors``)."""
    define(flags.FLAGS)

    def main(argv):
        logging.set_verbosity(logging.WARNING)  # app.run sets INFO, and Orbax logs at INFO.
        fv = flags.FLAGS
        errors.report_user_errors(lambda: run(fv), debug=fv.debug or errors.debug_requested())

    app.run(main, flags_parser=lambda argv: parse_or_exit(argv, usage))
