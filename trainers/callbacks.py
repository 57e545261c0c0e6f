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


def _logged_float(logs, name):
    """logs[name] as a float; None when absent or still a RemoteValue of a step in flight (parameter_server,
    where reading it would wait for that step and undo the asynchrony)."""
    remote = tf.distribute.experimental.coordinator.RemoteValue
    if logs is None or isinstance(logs, remote):
        return None
    value = logs.get(name)
    if value is None or isinstance(value, remote):
        return None
    return float(value)


LIKELY_FIXES = "Likely fixes: --label_smoothing=0.1, a lower --learning_rate, or a higher --temperature."


class NanGuard(tf.keras.callbacks.Callback):
    """Stops training at the first non-finite loss, before any checkpoint of the bad weights is written.

    It must run before CheckpointCallback in the callback list (which also checks the weights themselves: a step
    whose loss was finite can still write non-finite weights).
    """

    def __init__(self):
        super().__init__()
        self._supports_tf_logs = True  # takes RemoteValues: Keras then allows its batch hook under parameter_server

    def on_train_batch_end(self, batch, logs=None):
        loss = _logged_float(logs, "loss")
        if loss is not None and not math.isfinite(loss):
            step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True
            raise NonFiniteLossError(
                f"training loss became {loss} at step {step}. The last good checkpoint is kept. {LIKELY_FIXES}"
            )


def non_finite_variables(variables) -> list:
    """Names of the float variables holding NaN or Inf (a ShardedVariable's shards are checked one by one)."""
    names = []
    for variable in variables:
        if variable.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(variable))):
            names.append(variable.name)
    return names


class ProgressLogger(tf.keras.callbacks.Callback):
    """One log line per `every_steps` steps on every task, prefixed with the task ('worker 1: step 40/120 ...')."""

    def __init__(self, task_name: str, every_steps: int, total_steps: int):
        super().__init__()
        self.task_name = task_name
        self.every_steps = every_steps
        self.total_steps = total_steps
        self.last_logged_step = 0
        self._supports_tf_logs = True

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step // self.every_steps > self.last_logged_step // self.every_steps or step == self.total_steps:
            self.last_logged_step = step
            loss = _logged_float(logs, "loss")
            loss_text = f" loss {loss:.4f}" if loss is not None else ""
            logging.info("%s: step %d/%d%s", self.task_name, step, self.total_steps, loss_text)


class CheckpointCallback(tf.keras.callbacks.Callback):
    """Saves through a tf.train.CheckpointManager every `every_steps` steps and at the end of each epoch, never
    weights that hold NaN or Inf."""

    def __init__(self, manager: tf.train.CheckpointManager, every_steps: int):
        super().__init__()
        self.manager = manager
        self.every_steps = every_steps
        self.last_saved_step = -1
        self._supports_tf_logs = True

    def _save(self):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self.last_saved_step:
            bad = non_finite_variables(list(self.model.trainable_variables) + list(self.model.optimizer.variables))
            if bad:
                self.model.stop_training = True
                raise NonFiniteLossError(
                    f"weights became non-finite at step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                    f"not checkpointed, the last good checkpoint is kept. {LIKELY_FIXES}"
                )
            self.manager.save(checkpoint_number=step)
            self.last_saved_step = step

    def on_train_batch_end(self, batch, logs=None):
        # Saved on crossing a multiple of every_steps: with steps_per_execution > 1, or asynchronous
        # parameter_server steps, the step counter need not land on the multiple itself.
        step = int(self.model.optimizer.iterations.numpy())
        if self.every_steps and step // self.every_steps > max(self.last_saved_step, 0) // self.every_steps:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()
