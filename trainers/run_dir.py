"""A run's model_dir: its layout, its config, its checkpoints and the policy that restores them.

    <model_dir>/config.json         the RunConfig (trainers.run_config), written once by the chief
               flags.txt           the same as an absl flagfile (`--flagfile=` reproduces the run)
               checkpoints/        tf.train.CheckpointManager checkpoints ckpt-<step>
               backup/             BackupAndRestore's state of an interrupted multi_worker job
               tensorboard/        train/, eval/ events, hparams, projector/, the profiler's plugins/
               metrics.json        final held-out metrics of the model and the most-popular baseline
               run_summary.json    what the chief's run did (steps, restore, placement, fingerprint, metrics)
               task_summaries/     the same from each other task of a distributed job (<task>.json)
               evaluation/         trainers.evaluate's reports, step-<N>.json
               export/<n>/         SavedModel versions (trainers.export)

JSON files are written to a temporary name and renamed, so a killed run never leaves half a file.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Optional

from trainers import run_config

CONFIG = "config.json"
FLAGFILE = "flags.txt"
METRICS = "metrics.json"
RUN_SUMMARY = "run_summary.json"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Paths inside one model_dir."""

    path: str

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def checkpoints(self) -> str:
        return self.join("checkpoints")

    @property
    def backup(self) -> str:
        return self.join("backup")

    @property
    def tensorboard(self) -> str:
        return self.join("tensorboard")

    def events(self, name: str) -> str:
        """tensorboard/<name>: "train", "eval", "projector"."""
        return self.join("tensorboard", name)

    def evaluation(self, step: int) -> str:
        """trainers.evaluate's report of the checkpoint at `step`."""
        return self.join("evaluation", f"step-{step}.json")

    def task_summary(self, task_name: str) -> str:
        return self.join("task_summaries", task_name.replace(" ", "-") + ".json")


def write_text(path: str, text: str) -> None:
    """text to path through a temporary file and a rename: readers see the old file or the new one, whole."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as file:
        file.write(text)
    os.replace(temporary, path)


def write_json(path: str, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2))


def write_config(run_dir: RunDir, config_json: str, flagfile: str) -> None:
    """config.json (run_config.to_json's text) and flags.txt."""
    write_text(run_dir.join(CONFIG), config_json)
    write_text(run_dir.join(FLAGFILE), flagfile)


def load_config(model_dir: str):
    """(RunConfig, config.json document) of a run; FileNotFoundError without config.json, ConfigError."""
    path = os.path.join(model_dir, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir}: no {CONFIG}; expected the model_dir of a trainers.train run")
    return run_config.load(path)


def checkpoint_manager(tf, model, directory: str):
    """(tf.train.Checkpoint of the model and its optimizer, a CheckpointManager keeping the 3 newest)."""
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return checkpoint, tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)


def backup_step(tf, backup_dir: str) -> int:
    """The optimizer step stored by tf.keras.callbacks.BackupAndRestore in backup_dir (0 when there is none)."""
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if not latest:
        return 0
    reader = tf.train.load_checkpoint(latest)
    name = "model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"  # Checkpoint(model=...), model.optimizer
    if not reader.has_tensor(name):
        raise ValueError(f"{latest}: a BackupAndRestore checkpoint without {name}")
    return int(reader.get_tensor(name))


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where training continues: step 0 for a new run. from_backup: BackupAndRestore restores the weights inside
    fit (multi_worker), and Keras itself skips the steps it had done."""

    step: int = 0
    from_backup: bool = False
    checkpoint: Optional[str] = None


def restore_for_training(tf, checkpoint, run_dir: RunDir, multi_worker: bool, learning_rate: float) -> Resume:
    """The restore policy of a (re)started run.

    An interrupted multi_worker job: BackupAndRestore restores every worker alike inside fit, and its step tells
    where the data resumes. Otherwise every task restores the newest of the run's (the chief's) checkpoints, and
    this run's learning rate wins over the checkpoint's (lowering it is how a NaN run is resumed).
    """
    step = backup_step(tf, run_dir.backup) if multi_worker else 0
    if step:
        return Resume(step, from_backup=True)
    newest = tf.train.latest_checkpoint(run_dir.checkpoints)
    if not newest:
        return Resume()
    checkpoint.restore(newest).assert_existing_objects_matched()
    model = checkpoint.model
    model.optimizer.learning_rate = learning_rate
    return Resume(int(model.optimizer.iterations.numpy()), checkpoint=newest)


@dataclasses.dataclass
class RestoredRun:
    """A run's model rebuilt on one device from config.json, with its newest checkpoint restored."""

    model: Any
    corpus: Any
    config: run_config.RunConfig
    checkpoint: str
    step: int


def restore_model(model_dir: str) -> RestoredRun:
    """Rebuilds a run's model from <model_dir>/config.json and restores its newest checkpoint (whatever strategy
    trained it: a sharded or mirrored model restores into a plain one).

    Raises FileNotFoundError (no config.json or no checkpoint), ConfigError, and the corpus loaders' errors
    (ValueError subclasses) when the corpus is gone.
    """
    import tensorflow as tf

    from trainers import model_builder

    config, _ = load_config(model_dir)
    checkpoint = tf.train.latest_checkpoint(RunDir(model_dir).checkpoints)
    if checkpoint is None:
        raise FileNotFoundError(f"{model_dir}/checkpoints: no checkpoint to restore; train first")
    corpus = model_builder.load_corpus(config)
    model = model_builder.model_from_config(corpus, config)
    ids = tf.zeros([1], tf.int64)
    model.query_tower(ids), model.item_tower(ids)  # create the variables, so restore() checks every one
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    return RestoredRun(model, corpus, config, checkpoint, int(checkpoint.rsplit("-", 1)[-1]))


def write_summary(run_dir: RunDir, task_name: str, is_chief: bool, summary: Dict[str, Any]) -> None:
    """run_summary.json (the chief) or task_summaries/<task>.json (every other task)."""
    write_json(run_dir.join(RUN_SUMMARY) if is_chief else run_dir.task_summary(task_name), summary)
