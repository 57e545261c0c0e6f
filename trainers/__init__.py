"""Command-line entry points: training, evaluation and export. The only package that reads flags and writes."""

import logging
import os

from absl import logging as absl_logging

import retrieval  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from trainers import cli

cli.quiet_tensorflow_for_commands()  # before any command of this package imports TensorFlow


class _NoTensorFlowInfo(logging.Filter):
    """Drops INFO lines from TensorFlow's own modules (checkpoint sharding callbacks, signature renames), which
    would bury the progress lines a user reads, unless --verbosity asks for them; their warnings and errors still
    show. TensorFlow logs through both absl's logger (this filter on absl's handler, by source file) and its own
    `tensorflow` logger (whose level is set below)."""

    def filter(self, record):
        return (record.levelno > logging.INFO or f"{os.sep}tensorflow{os.sep}" not in record.pathname
                or absl_logging.get_verbosity() >= cli.VERBOSE)


absl_logging.get_absl_handler().addFilter(_NoTensorFlowInfo())
logging.getLogger("tensorflow").setLevel(logging.WARNING)
