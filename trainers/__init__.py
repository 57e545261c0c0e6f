"""Command-line entry points: training, evaluation and export. The only package that reads flags and writes."""

import retrieval  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
