"""Interaction data: the built-in synthetic corpus, vocabularies by frequency and tf.data pipelines."""

import sys

import retrieval  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)

if sys.argv[:1] == ["-m"]:  # run as a command (python -m data.prepare): its output as trainers/cli.py says
    from trainers import cli

    cli.quiet_tensorflow_for_commands()
