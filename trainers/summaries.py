"""What the trainer shows in TensorBoard beyond Keras' own scalars: throughput, learning rate, hparams and the
embedding projector."""

import os
import time
from typing import Dict, Optional

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


def write_projector(log_dir: str, item_embeddings: np.ndarray, item_counts: np.ndarray, item_keys=None) -> None:
    """The embedding projector of the given (most frequent) items, with key and count as metadata.

    item_embeddings: [n, dim] for item ids 0..n-1 (ids are ranked by frequency, so these are the n most
    frequent). Written as a checkpoint plus projector_config.pbtxt in log_dir.
    """
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "metadata.tsv"), "w") as file:
        file.write("item_id\tkey\tcount\n")
        for item_id, count in enumerate(item_counts[: len(item_embeddings)]):
            key = item_keys[item_id] if item_keys is not None else item_id
            file.write(f"{item_id}\t{key}\t{int(count)}\n")
    embedding = tf.Variable(item_embeddings, name="item_embedding")
    tf.train.Checkpoint(embedding=embedding).save(os.path.join(log_dir, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(log_dir, config)


def check_initial_loss(model, first_batch, expected: Optional[float], writer) -> None:
    """Step-zero check (LOSSES.md): a fresh model scores all candidates nearly alike.

    Its first loss should then be close to the loss of all-zero scores on the same batch, which is
    ln(num_true + num_sampled) for an uncorrected sampled softmax (log-Q correction and the other losses shift it,
    so the zero-score loss is the reference that holds for every setting). Logs initial_loss,
    initial_loss_zero_scores and, where it applies (`expected`), initial_loss_expected = ln(candidate count) to
    TensorBoard; warns when the first loss is more than 25% away from the reference.
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
    if abs(initial_loss - reference) > 0.25 * max(abs(reference), 1e-6):
        logging.warning(
            "step-0 loss %.4f is far from %.4f, the loss of all-zero scores: a freshly initialised model should "
            "score candidates nearly alike. Likely causes: embeddings initialised too large, a --temperature far "
            "below 1, or labels that do not match the candidates.",
            initial_loss,
            reference,
        )
