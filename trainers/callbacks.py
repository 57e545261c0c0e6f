"""Keras callbacks of the trainer: held-out evaluation, NaN guard, and step checkpoints."""

import math
from typing import Sequence

import tensorflow as tf
from absl import logging

from trainers import evaluation


class NonFiniteLossError(RuntimeError):
    pass


class EvaluationCallback(tf.keras.callbacks.Callback):
    """Exact full-corpus metrics on held-out users after every epoch, written to TensorBoard (eval/...)."""

    def __init__(self, held_out: evaluation.HeldOut, ks: Sequence[int], summary_dir: str):
        super().__init__()
        self.held_out = held_out
        self.ks = ks
        self.writer = tf.summary.create_file_writer(summary_dir)
        self.last_metrics = {}

    def on_epoch_end(self, epoch, logs=None):
        self.last_metrics = evaluation.evaluate(self.model, self.held_out, self.ks)
        step = int(self.model.optimizer.iterations.numpy())
        # The Keras TensorBoard callback installs a global record_if(step % update_freq == 0); eval always records.
        with self.writer.as_default(step=step), tf.summary.record_if(True):
            for name, value in self.last_metrics.items():
                tf.summary.scalar(name, value)
        self.writer.flush()
        summary = "  ".join(f"recall@{k}={self.last_metrics[f'recall_at_{k}']:.4f}" for k in self.ks)
        logging.info("epoch %d step %d held-out %s", epoch + 1, step, summary)
        if logs is not None:
            logs.update({f"eval_{name}": value for name, value in self.last_metrics.items()})


class NanGuard(tf.keras.callbacks.Callback):
    """Stops training at the first non-finite loss, before any checkpoint of the bad weights is written.

    It must run before CheckpointCallback in the callback list.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True
            raise NonFiniteLossError(
                f"training loss became {float(loss)} at step {step}. The last good checkpoint is kept. Likely fixes: "
                "--label_smoothing=0.1, a lower --learning_rate, or a higher --temperature."
            )


class CheckpointCallback(tf.keras.callbacks.Callback):
    """Saves through a tf.train.CheckpointManager every `every_steps` steps and at the end of each epoch."""

    def __init__(self, manager: tf.train.CheckpointManager, every_steps: int):
        super().__init__()
        self.manager = manager
        self.every_steps = every_steps
        self.last_saved_step = -1

    def _save(self):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self.last_saved_step:
            self.manager.save(checkpoint_number=step)
            self.last_saved_step = step

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and int(self.model.optimizer.iterations.numpy()) % self.every_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()
