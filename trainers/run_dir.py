"""A run's model_dir: its layout, its config and the summaries a run writes into it.

    <model_dir>/config.json         the RunConfig (trainers.run_config), written once by the chief
               flags.txt           the same as an absl flagfile (`--flagfile=` reproduces the run)
               checkpoints/        tf.train.CheckpointManager checkpoints ckpt-<step> (trainers.checkpoints)
                          damaged/    damaged checkpoints the restore policy set aside (never deleted)
                          best/       --keep_best: the best epoch's checkpoint and best.json
               backup/             BackupAndRestore's state of an interrupted multi_worker job
               tensorboard/        hparams (its own events), the profiler's plugins/, and one run per directory:
                          train/        per-step loss, throughput, sampler diagnostics
                          eval/         held-out metrics per epoch (recall_at_10, cold_users/recall_at_10, ...)
                          most_popular/, item_transitions/  the baselines (trainers.baselines) under eval/'s
                                        tag names, so charts overlay them
                          projector/    item embeddings checkpoint, projector_config.pbtxt, metadata.tsv (key,
                                        item_id, count) and an event file, without which TensorBoard sees no run
               metrics.json        final held-out metrics of the model and the most-popular baseline
               initial_loss.json   the step-0 check (trainers.summaries.check_initial_loss) of a run that started at 0
               run_summary.json    what the chief's run did (steps, restore, placement, fingerprint, metrics)
               task_summaries/     the same from each other task of a distributed job (<task>.json)
               task_status/        where each task of a distributed job is (trainers.task_status), <task>.json
               evaluation/         trainers.evaluate's reports, step-<N>.json
               export/<n>/         SavedModel versions (trainers.export)

JSON files are written to a temporary name and renamed (data.atomic.write_file_atomically), so a killed run never
leaves half a file.
"""

import dataclasses
import glob
import os
from typing import Any, Dict

from data import atomic
from trainers import checkpoints, run_config

CONFIG = "config.json"
FLAGFILE = "flags.txt"
METRICS = "metrics.json"
INITIAL_LOSS = "initial_loss.json"
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
    def best_checkpoints(self) -> str:
        """--keep_best: the checkpoint of the best epoch so far, and best.json describing it."""
        return self.join("checkpoints", "best")

    @property
    def backup(self) -> str:
        return self.join("backup")

    @property
    def tensorboard(self) -> str:
        return self.join("tensorboard")

    def events(self, name: str) -> str:
        """tensorboard/<name>, one TensorBoard run: "train", "eval", a baseline's name ("most_popular",
        "item_transitions"), "projector"."""
        return self.join("tensorboard", name)

    def evaluation(self, step: int) -> str:
        """trainers.evaluate's report of the checkpoint at `step`."""
        return self.join("evaluation", f"step-{step}.json")

    def task_summary(self, task_name: str) -> str:
        return self.join("task_summaries", task_name.replace(" ", "-") + ".json")


def write_config(run_dir: RunDir, config_json: str, flagfile: str) -> None:
    """config.json (run_config.to_json's text) and flags.txt."""
    atomic.write_file_atomically(run_dir.join(CONFIG), config_json)
    atomic.write_file_atomically(run_dir.join(FLAGFILE), flagfile)


def load_config(model_dir: str):
    """(RunConfig, config.json document) of a run; FileNotFoundError without config.json, ConfigError."""
    path = os.path.join(model_dir, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir}: no {CONFIG}; expected the model_dir of a trainers.train run")
    return run_config.load(path)


def check_restart(model_dir: str, config: run_config.RunConfig) -> None:
    """checkpoints.CheckpointError, before any file is touched, when model_dir holds checkpoints of a run whose
    config.json differs from this run's in a model-defining setting (run_config.MODEL_DEFINING): its checkpoints
    would otherwise go on under another model (a dropped encoder's weights lost without a word)."""
    run = RunDir(model_dir)
    saved = sorted(glob.glob(os.path.join(run.checkpoints, "ckpt-*.index")), key=_checkpoint_number)
    if not os.path.isfile(run.join(CONFIG)) or not (saved or os.path.isdir(run.backup)):
        return
    trained, _ = load_config(model_dir)
    differences = run_config.model_defining_differences(trained, config)
    if differences:
        name, old, new = differences[0]
        newest = saved[-1][: -len(".index")] if saved else run.backup
        raise checkpoints.CheckpointError(
            f"{newest} does not fit this run's model: --{name}={_flag_value(new)}, but the run in "
            f"--model_dir={model_dir} was trained with --{name}={_flag_value(old)}; a model_dir holds one model: "
            "train with its config.json settings, or into a new --model_dir")


def _checkpoint_number(path: str) -> int:
    return int(os.path.basename(path)[len("ckpt-"):-len(".index")])


def _flag_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def write_summary(run_dir: RunDir, task_name: str, is_chief: bool, summary: Dict[str, Any]) -> None:
    """run_summary.json (the chief) or task_summaries/<task>.json (every other task)."""
    atomic.write_json_atomically(run_dir.join(RUN_SUMMARY) if is_chief else run_dir.task_summary(task_name), summary)

