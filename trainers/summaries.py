"""What the trainer shows in TensorBoard beyond Keras' own scalars: throughput, learning rate, hparams and the
embedding projector."""

import os
import time
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import api as hparams_api


class ThroughputCallback(tf.keras.callbacks.Callback):
    """Every `every_steps` steps: examples_per_second, step_time_ms and learning_rate (tensorboard/train).

    Times are wall-clock means over the last window of steps, measured from the host, so they include input
    pipeline stalls: the figure a user would compute from the progress bar.
    """

    def __init__(self, writer, global_batch_size: int, every_steps: int):
        super().__init__()
        self.writer = writer
        self.global_batch_size = global_batch_size
        self.every_steps = every_steps
        self.window_start = None
        self.window_first_step = 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.window_start is None:
            self.window_start = time.perf_counter()
            self.window_first_step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1 Keras calls this once per execution, so count real steps and log on
        # crossing a multiple of every_steps rather than landing on one.
        step = int(self.model.optimizer.iterations.numpy())
        steps_done = step - self.window_first_step
        if steps_done <= 0 or step // self.every_steps == self.window_first_step // self.every_steps:
            return
        seconds = (time.perf_counter() - self.window_start) / steps_done
        learning_rate = self.model.optimizer.learning_rate
        if callable(learning_rate):
            learning_rate = learning_rate(self.model.optimizer.iterations)
        write_scalars(self.writer, step, {
            "examples_per_second": self.global_batch_size / seconds,
            "step_time_ms": 1000.0 * seconds,
            "learning_rate": float(tf.keras.backend.get_value(learning_rate)),
        })
        self.window_start = None

    def on_epoch_end(self, epoch, logs=None):
        self.window_start = None  # evaluation time is not step time


def write_scalars(writer, step: int, values: Dict[str, float], flush: bool = False) -> None:
    """Scalars {tag: value} at `step`. Always recorded: the Keras TensorBoard callback installs a global
    record_if(step % update_freq == 0) that would otherwise drop them."""
    with writer.as_default(step=step), tf.summary.record_if(True):
        for name, value in values.items():
            tf.summary.scalar(name, value)
    if flush:
        writer.flush()


def write_hparams(log_dir: str, hparams: Dict[str, object]) -> None:
    """One hparams entry for the run (TensorBoard's HParams tab) so runs compare side by side."""
    values = {name: value if isinstance(value, (bool, int, float, str)) else str(value) for name, value in hparams.items()}
    with tf.summary.create_file_writer(log_dir).as_default():
        hparams_api.hparams(values)


PROJECTOR_TENSOR = "embedding/.ATTRIBUTES/VARIABLE_VALUE"  # Checkpoint(embedding=...)'s name for the table
PROJECTOR_METADATA = "metadata.tsv"


def write_projector(log_dir: str, item_embeddings: np.ndarray, item_counts: np.ndarray, item_keys=None,
                    step: int = 0) -> None:
    """The embedding projector of the given (most frequent) items, labelled by their keys, with counts.

    item_embeddings: [n, dim] for item ids 0..n-1 (ids are ranked by frequency, so these are the n most
    frequent). Written into log_dir as a checkpoint, projector_config.pbtxt, metadata.tsv and an event file:
    TensorBoard's projector plugin looks for the config only in the directories of runs, and a run is a
    directory holding an event file (Keras' TensorBoard callback puts its config beside its train/ events).
    """
    os.makedirs(log_dir, exist_ok=True)
    _write_projector_metadata(os.path.join(log_dir, PROJECTOR_METADATA), item_counts[: len(item_embeddings)],
                              item_keys)
    embedding = tf.Variable(item_embeddings, name="item_embedding")
    tf.train.Checkpoint(embedding=embedding).save(os.path.join(log_dir, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = PROJECTOR_TENSOR
    entry.metadata_path = PROJECTOR_METADATA
    projector.visualize_embeddings(log_dir, config)
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default(step=step), tf.summary.record_if(True):
        tf.summary.text("projector", f"the {len(item_embeddings)} most frequent items' embeddings "
                                     f"({item_embeddings.shape[1]} dimensions), labelled by {PROJECTOR_METADATA}")
    writer.close()


def _write_projector_metadata(path: str, item_counts: np.ndarray, item_keys) -> None:
    """One row per item: key (when the corpus has a vocabulary), item_id, count. The key comes first because the
    projector labels points by the first non-numeric column, else by the first one (keys such as MovieLens ids
    are numeric)."""
    with open(path, "w") as file:
        file.write("key\titem_id\tcount\n" if item_keys is not None else "item_id\tcount\n")
        for item_id, count in enumerate(item_counts):
            key = _one_cell(item_keys[item_id]) + "\t" if item_keys is not None else ""
            file.write(f"{key}{item_id}\t{int(count)}\n")


def _one_cell(key) -> str:
    """A key as one TSV cell: its tabs and line breaks, which would split its row, as spaces."""
    return str(key).replace("\t", " ").replace("\r", " ").replace("\n", " ")


# The step-0 check's bound: the first loss within this share of the all-zero-scores loss.
INITIAL_LOSS_TOLERANCE = 0.25


def check_initial_loss(model, first_batch, expected: Optional[float], writer) -> Dict[str, Any]:
    """Step-zero check (LOSSES.md): a fresh model scores all candidates nearly alike.

    Its first loss should then be close to the loss of all-zero scores on the same batch, which is
    ln(num_true + num_sampled) for an uncorrected sampled softmax (log-Q correction and the other losses shift it,
    so the zero-score loss is the reference that holds for every setting). Logs initial_loss,
    initial_loss_zero_scores and, where it applies (`expected`), initial_loss_expected = ln(candidate count) to
    TensorBoard; warns when the first loss is more than INITIAL_LOSS_TOLERANCE (25%) away from the reference.
    Returns the check's result under the same names, for the run's initial_loss.json: {"initial_loss",
    "initial_loss_zero_scores", "initial_loss_expected" (None where it does not apply), "tolerance" (the share of
    the reference allowed), "within_tolerance"}.
    """
    initial_loss = float(tf.reduce_mean(model.per_example_loss(first_batch)))  # per example, whatever the reduction
    query_embeddings = model.query_tower(first_batch["user_id"])
    zero_scores = model.retrieval_loss(tf.zeros_like(query_embeddings), first_batch["item_id"], model.item_tower)
    reference = float(tf.reduce_mean(zero_scores))
    values = {"initial_loss": initial_loss, "initial_loss_zero_scores": reference}
    if expected is not None:
        values["initial_loss_expected"] = expected
    write_scalars(writer, 0, values, flush=True)
    expected_text = f", ln(candidate count) = {expected:.4f}" if expected is not None else ""
    logging.info("step-0 loss %.4f; with all-zero scores %.4f%s", initial_loss, reference, expected_text)
    # Written as "not more than" so that a NaN loss is out of bounds too.
    within = abs(initial_loss - reference) <= INITIAL_LOSS_TOLERANCE * max(abs(reference), 1e-6)
    if not within:
        logging.warning(
            "step-0 loss %.4f is far from %.4f, the loss of all-zero scores: a freshly initialised model should "
            "score candidates nearly alike. Likely causes: embeddings initialised too large, a --temperature far "
            "below 1, or labels that do not match the candidates.",
            initial_loss,
            reference,
        )
    return {**values, "initial_loss_expected": expected, "tolerance": INITIAL_LOSS_TOLERANCE,
            "within_tolerance": within}
