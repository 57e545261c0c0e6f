"""Command-line entry points: training, evaluation and export. The only package that reads flags and writes."""

import logging

import retrieval  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)

# TensorFlow's own INFO lines (checkpoint sharding callbacks, tracing notes) would bury the progress lines a user
# reads; its warnings and errors still show. Our lines go through absl's logger, which this leaves alone.
logging.getLogger("tensorflow").setLevel(logging.WARNING)
