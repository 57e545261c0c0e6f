"""Keras callbacks of the trainer (progress, TensorBoard, throughput, loss progress, NaN guard, backup,
checkpoints, held-out evaluation with the best checkpoint and early stopping) and `make_callbacks`, the one place
that fixes their order."""

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import tensorflow as tf
from absl import logging

from data import atomic
from trainers import health, summaries, variables
from trainers.distribute import LOCAL_TASK
from trainers import held_out as held_out_lib


class NonFiniteLossError(RuntimeError):
    pass


BEST_STATE = "best.json"  # beside the best checkpoint: which epoch it is, and its metrics


class BestKeeper:
    """--keep_best: the checkpoint of the epoch with the best held-out `metric` (higher is better), saved (the model
    only) in its own directory with BEST_STATE beside it ({metric, value, epoch, step, checkpoint, metrics}), which a
    restarted run reads back; with patience, stops training after that many epochs without a better value."""

    def __init__(self, metric: str, patience: int, directory: str):
        self.metric, self.patience, self.directory = metric, patience, directory
        self.manager = None  # made on the first save, of the model being trained
        self.best = self._load()
        self.stopped_early_at: Optional[dict] = None

    def _load(self) -> Optional[dict]:
        path = os.path.join(self.directory, BEST_STATE)
        if not os.path.exists(path):
            return None
        with open(path) as file:
            state = json.load(file)
        return state if state.get("metric") == self.metric else None  # another metric's best is no best of this one

    def offer(self, model, epoch: int, metrics: dict) -> bool:
        """Records epoch (1-based, of the whole run)'s held-out metrics; True when training should stop early."""
        step, value = int(model.optimizer.iterations.numpy()), metrics.get(self.metric)
        if value is None:
            logging.warning("--keep_best=%s: the evaluation has no such metric at step %d", self.metric, step)
            return False
        if self.best is None or value > self.best["value"]:
            if self.manager is None:
                self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), self.directory, 1)
            path = self.manager.save(checkpoint_number=step)
            self.best = {"metric": self.metric, "value": value, "epoch": epoch, "step": step, "checkpoint": path,
                         "metrics": dict(metrics)}
            atomic.write_json_atomically(os.path.join(self.directory, BEST_STATE), self.best)
            logging.info("epoch %d step %d: best %s so far (%.4f), kept as %s", epoch, step, self.metric, value, path)
            return False
        if self.patience and epoch - self.best["epoch"] >= self.patience:
            self.stopped_early_at = {"epoch": epoch, "step": step}
            logging.info("early stopping at epoch %d step %d: no better %s for %d epochs (best %.4f at epoch %d)",
                         epoch, step, self.metric, self.patience, self.best["value"], self.best["epoch"])
            return True
        return False

    def report(self) -> dict:
        """For the run summary: the best epoch, and whether (and where) training stopped early."""
        return {"best": self.best, "stopped_early": self.stopped_early_at is not None,
                "stopped_early_at": self.stopped_early_at}


class EvaluationCallback(tf.keras.callbacks.Callback):
    """Exact full-corpus metrics on held-out users of `split` (the validation split when the corpus has one:
    model selection never reads the test split then) after every epoch, written to TensorBoard (eval/..., with a
    text summary "split" naming it), offered to the BestKeeper when --keep_best is set (which may stop training
    early), and the chief's one line of the epoch: its loss, the split's recall and its time (in place of Keras'
    line of every metric)."""

    def __init__(self, held_out: held_out_lib.HeldOut, ks: Sequence[int], summary_dir: str,
                 keeper: Optional[BestKeeper] = None, split: str = held_out_lib.TEST):
        super().__init__()
        self.held_out = held_out
        self.ks = ks
        self.writer = tf.summary.create_file_writer(summary_dir)
        self.keeper = keeper
        self.split = split
        self.last_metrics = {}
        self.epoch_start = time.perf_counter()
        with self.writer.as_default():  # which split the eval curves are, for whoever reads the charts
            tf.summary.text("split", f"eval/ curves: the {split} split", step=0)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        loss = _logged_float(logs, "loss")  # before the eval_ metrics join the logs
        self.last_metrics = held_out_lib.evaluate(self.model, self.held_out, self.ks)
        step = int(self.model.optimizer.iterations.numpy())
        summaries.write_scalars(self.writer, step, self.last_metrics, flush=True)
        summary = "  ".join(f"recall@{k}={self.last_metrics[f'recall_at_{k}']:.4f}" for k in self.ks)
        loss_text = f"loss {loss:.4f}  " if loss is not None else ""
        logging.info("epoch %d/%d step %d: %s%s %s  (%.1f s)", epoch + 1, self.params.get("epochs", 0), step,
                     loss_text, self.split, summary, time.perf_counter() - self.epoch_start)
        if logs is not None:
            logs.update({f"eval_{name}": value for name, value in self.last_metrics.items()})
        if self.keeper is not None and self.keeper.offer(self.model, epoch + 1, self.last_metrics):
            self.model.stop_training = True

    def final_metrics(self) -> dict:
        """The metrics on self.split of the model the run exports: the best epoch's with --keep_best, else the
        last epoch's (empty when no epoch ran)."""
        if self.keeper is not None and self.keeper.best is not None:
            return self.keeper.best["metrics"]
        return self.last_metrics

    def report(self) -> dict:
        return self.keeper.report() if self.keeper is not None else {}


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

    make_callbacks puts it before every callback that saves (CheckpointCallback also checks the weights
    themselves: a step whose loss was finite can still write non-finite weights).
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


class LossProgressCheck(tf.keras.callbacks.Callback):
    """trainers.health's checks that a run learns: before training, a setting that leaves rows without negatives;
    in a run from step 0, the loss of its first batch (probe_batch) at step 0 (exactly 0: no negatives) and again
    after health.CHECK_STEP steps (not moved). Each warning is logged and kept in `warnings` (the run summary's)."""

    def __init__(self, loss, optimization, probe_batch=None):
        """loss, optimization: the run's LossConfig and OptimizationConfig (what the warnings name)."""
        super().__init__()
        self.loss, self.optimization = loss, optimization
        self.probe_batch = probe_batch
        self.warnings: List[dict] = []
        self.initial_loss: Optional[float] = None  # the probe's loss at step 0, until the check is done
        self.started = False
        self._supports_tf_logs = True  # its batch hook is allowed under parameter_server too

    def _probe_loss(self) -> float:
        """The mean per-example loss of the probe batch (whatever --loss_reduction the steps use)."""
        return float(tf.reduce_mean(self.model.per_example_loss(self.probe_batch)))

    def _warn(self, warning) -> None:
        if warning is not None:
            logging.warning("%s", warning["message"])
            self.warnings.append(warning)

    def report(self) -> dict:
        return {"warnings": self.warnings}

    def on_train_begin(self, logs=None):
        if self.started:  # fit runs twice after a mid-epoch resume
            return
        self.started = True
        logged = self.probe_batch is not None and "negative_ids" in self.probe_batch
        self._warn(health.rows_without_negatives(self.loss, self.optimization, logged))
        if self.probe_batch is not None and not self.warnings and int(self.model.optimizer.iterations.numpy()) == 0:
            self.initial_loss = self._probe_loss()
            self._warn(health.zero_loss(self.initial_loss, self.loss, self.optimization))
            if self.warnings:
                self.initial_loss = None

    def on_train_batch_end(self, batch, logs=None):
        if self.initial_loss is not None and int(self.model.optimizer.iterations.numpy()) >= health.CHECK_STEP:
            self._warn(health.loss_not_moved(self.initial_loss, self._probe_loss(), self.loss, self.optimization))
            self.initial_loss = None


def reports(fit_callbacks) -> Dict[str, Any]:
    """What the callbacks report for the run summary: their report() entries, "warnings" lists joined."""
    merged: Dict[str, Any] = {"warnings": []}
    for callback in fit_callbacks:
        entries = dict(callback.report()) if hasattr(callback, "report") else {}
        merged["warnings"] += entries.pop("warnings", [])
        merged.update(entries)
    return merged


class ProgressLogger(tf.keras.callbacks.Callback):
    """One log line per `every_steps` steps, prefixed with the task ('worker 1: step 40/120 ...'): on every task
    of a distributed job, whose logs an operator reads apart. A local run has the epoch lines instead (and a
    progress line on a terminal), see make_callbacks."""

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
            weights = list(self.model.trainable_variables) + list(self.model.optimizer.variables)
            bad = variables.non_finite_variables(weights)
            if bad:
                self.model.stop_training = True
                raise NonFiniteLossError(
                    f"weights became non-finite at step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                    f"not checkpointed, the last good checkpoint is kept. {LIKELY_FIXES}"
                )
            self.manager.save(checkpoint_number=step)
            self.last_saved_step = step

    def on_train_begin(self, logs=None):
        if self.last_saved_step < 0:  # a resumed run starts at its restored checkpoint's step: nothing new to save
            self.last_saved_step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        # Saved on crossing a multiple of every_steps: with steps_per_execution > 1, or asynchronous
        # parameter_server steps, the step counter need not land on the multiple itself.
        step = int(self.model.optimizer.iterations.numpy())
        if self.every_steps and step // self.every_steps > max(self.last_saved_step, 0) // self.every_steps:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()


class BackupAndRestore(tf.keras.callbacks.BackupAndRestore):
    """tf.keras.callbacks.BackupAndRestore that records, with its backup, the last step of the execution it backs
    up after. Keras records the first (in on_train_batch_begin), so with steps_per_execution > 1 a job restored
    from the backup would run all but one of that execution's steps again (129 steps of a 120-step job at 10 steps
    per execution)."""

    def on_train_batch_end(self, batch, logs=None):
        if not isinstance(self.model.distribute_strategy, tf.distribute.ParameterServerStrategy):  # as Keras
            self._training_state._ckpt_saved_batch.assign(batch)  # batch: the execution's last step in the epoch
        super().on_train_batch_end(batch, logs)


@dataclasses.dataclass
class CallbackSettings:
    """What make_callbacks needs of the run: its task, its files, and the run config's logging cadence."""

    task_name: str
    total_steps: int
    log_every_steps: int
    checkpoint_every_steps: int
    examples_per_step: int
    tensorboard_dir: Optional[str] = None  # the chief's; None on other tasks (no TensorBoard, no evaluation)
    profile_steps: Sequence[int] = ()
    backup_dir: Optional[str] = None  # multi_worker: BackupAndRestore's directory
    parameter_server: bool = False
    # The run's LossConfig and OptimizationConfig, for LossProgressCheck (None: no such check).
    loss: Any = None
    optimization: Any = None
    steps_per_execution: int = 1


def make_callbacks(
    settings: CallbackSettings,
    manager: tf.train.CheckpointManager,
    train_writer=None,
    evaluation: Optional[EvaluationCallback] = None,
    probe_batch=None,
) -> List[tf.keras.callbacks.Callback]:
    """The trainer's callbacks in the order Keras must run them.

    The order is the contract: progress, TensorBoard and the loss-progress check see every step first; the NaN
    guard stops a non-finite step before BackupAndRestore or the checkpoint callback can save its weights;
    held-out evaluation runs last, on the weights the epoch's checkpoint holds. probe_batch: the run's first
    batch, for the loss-progress check (settings.loss and settings.optimization).
    """
    ordered = []
    if settings.task_name != LOCAL_TASK:
        ordered.append(ProgressLogger(settings.task_name, settings.log_every_steps, settings.total_steps))
    if settings.tensorboard_dir:
        profile_batch = tuple(settings.profile_steps) if settings.profile_steps else 0
        ordered.append(tf.keras.callbacks.TensorBoard(
            settings.tensorboard_dir, update_freq=settings.log_every_steps, profile_batch=profile_batch
        ))
        if not settings.parameter_server:  # Keras allows no batch hooks on plain logs there
            ordered.append(
                summaries.ThroughputCallback(train_writer, settings.examples_per_step, settings.log_every_steps)
            )
    if settings.loss is not None:
        ordered.append(LossProgressCheck(settings.loss, settings.optimization, probe_batch))
    ordered.append(NanGuard())
    if settings.backup_dir:
        every = settings.checkpoint_every_steps
        # BackupAndRestore counts its batch hooks, which Keras calls once per execution of steps_per_execution.
        save_freq = max(1, every // settings.steps_per_execution) if every else "epoch"
        ordered.append(BackupAndRestore(settings.backup_dir, save_freq=save_freq))
    ordered.append(CheckpointCallback(manager, settings.checkpoint_every_steps))
    if evaluation is not None:
        ordered.append(evaluation)
    return ordered
