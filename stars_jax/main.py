"""The main job: ``python -m stars_jax.main --config configs/NAME.py --workdir DIR``.

Any config key can be overridden as ``--config.section.key=value``; an unknown key is an error.
Rerunning the same command resumes from the newest checkpoint in ``--workdir`` (a local path
or a gs:// bucket). Multi-process: ``--coordinator_address``, ``--num_processes`` and
``--process_id`` (TPU pods and SLURM jobs are detected without them). Compiled steps are
cached in ``--compilation_cache_dir``, so a rerun or resume starts in seconds.

Expected errors (a bad config value or key, a workdir in use or holding another run's
checkpoints, unreadable input files) print one paragraph and exit with status 2; ``--debug``
(or ``STARS_JAX_DEBUG=1``) shows their traceback.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from stars_jax import cli, errors, parallel, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", -1, "This process's index (multi-process runs).")
flags.DEFINE_string(
    "compilation_cache_dir",
    "~/.cache/stars_jax/xla",
    "JAX's persistent compilation cache: reruns and resumes skip recompiling the steps. "
    "'' disables it; the JAX_COMPILATION_CACHE_DIR environment variable wins over this flag.",
)
flags.DEFINE_list(
    "allow_config_change",
    [],
    "Config keys a resumed run may change although they define the run (see "
    "stars_jax.workdir.SAFE_KEYS for those that may always change).",
)
flags.DEFINE_bool("debug", False, "Show tracebacks of expected errors too.")
flags.mark_flags_as_required(["config", "workdir"])


def enable_compilation_cache(path: str) -> None:
    if path and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO.
    enable_compilation_cache(FLAGS.compilation_cache_dir)
    # TPU pods and SLURM jobs are detected; explicit flags cover other clusters.
    parallel.maybe_initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    if jax.process_index() != 0:  # One console: progress lines come from process 0 only.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's whole life)
    run = lambda: train.train_and_evaluate(
        FLAGS.config, FLAGS.workdir, tuple(FLAGS.allow_config_change)
    )
    errors.report_user_errors(run, debug=FLAGS.debug or errors.debug_requested())


USAGE = "python -m stars_jax.main --config=FILE --workdir=DIR [--config.KEY=VALUE ...]"


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_or_exit(argv, USAGE))
