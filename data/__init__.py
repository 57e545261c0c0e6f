"""Interaction data: the built-in synthetic corpus, vocabularies by frequency and tf.data pipelines."""

import retrieval  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
