"""Two-tower retrieval library: towers, candidate samplers, losses, metrics and indexes.

Importing this package sets TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported: TFRS needs Keras 2
(tf-keras), and TensorFlow 2.20 otherwise binds `tf.keras` to Keras 3. This is the one place the project sets
it; `data` and `trainers` import this package before anything else.
"""

import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "TensorFlow was imported before `retrieval` with TF_USE_LEGACY_KERAS unset, so tf.keras is Keras 3 and "
        "TFRS cannot work. Import `retrieval` (or `data` / `trainers`) before TensorFlow, or export "
        "TF_USE_LEGACY_KERAS=1."
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
