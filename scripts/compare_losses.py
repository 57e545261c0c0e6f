"""Trains every loss, sampler and switch for the same budget and compares them; then the drift experiment.

    nice -n 10 .venv/bin/python scripts/compare_losses.py --output_dir=docs --work_dir=/tmp/compare_losses

Each row is a real `python -m trainers.train` run in a subprocess (its own model_dir), read back from the files
the run writes for tools: metrics.json (held-out recall@K of the model and the most-popular baseline),
run_summary.json (final step, the step it restored from) and its TensorBoard scalars (examples_per_second,
held-out recall@100 per epoch). Nothing is parsed from log lines.

Part 1, on the built-in corpus and on MovieLens 100K (`--data`; MovieLens is fetched from PyPI's recbole wheel on
first use, and skipped with the reason in the outputs when that fails): one change at a time from the default
sampled softmax (SETTINGS), every run `--epochs` x `--steps_per_epoch` steps of `--batch_size` interactions.

Part 2, the drift experiment (`--drift`): a built-in-style corpus whose item popularity is permuted half-way
through training. The trainer shuffles each epoch uniformly, so drift inside one run needs the data itself to
change: the script writes two prepared corpus directories with the same item and user ids (write_drift_corpora),
phase A drawn with one popularity and phase B with a permuted one, both holding out phase B's last interaction
per user and both carrying the whole log's item counts (item_counts.npy, what a corpus-count Q reads, stale for
either phase). Each DRIFT_SETTINGS row trains on A, then runs the trainer again on B with the same --model_dir
and twice the epochs: the second run restores A's newest checkpoint (streaming estimates and optimizer included)
and continues at its step; its run_summary.json says where it restored from.

Writes <output_dir>/compare_losses.md (the tables), compare_losses.json (every figure of the tables, for tools and
tests) and compare_losses.png (recall@100 against examples/s per data set; recall@100 against step in the drift
experiment).
"""

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import app, flags, logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import retrieval  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from data import sources  # noqa: E402
from retrieval.retrieval_loss import MIN_EXPECTED_COUNT  # noqa: E402
from trainers.event_reader import read_scalars  # noqa: E402
from trainers.run_config import RunConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str  # for --only and the JSON
    name: str  # for the table
    flags: Sequence[str]  # trainer flags on top of the common ones
    batch_divisor: int = 1  # rows of num_true interactions: the batch shrinks so that interactions per step stay


# One change at a time from the default sampled softmax (1 true item, num_sampled log-uniform negatives, log-Q
# correction, accidental hits removed).
SETTINGS = [
    Setting("full_softmax", "full softmax", ["--loss=full_softmax"]),
    Setting("sampled_softmax", "sampled softmax, log-uniform (defaults)", []),
    Setting("no_log_q", "sampled softmax, no log-Q", ["--nosubtract_log_q"]),
    Setting("keep_hits", "sampled softmax, keep accidental hits", ["--noremove_accidental_hits"]),
    Setting("label_smoothing", "sampled softmax, label_smoothing=0.1", ["--label_smoothing=0.1"]),
    # Rows of 2 interactions at half the batch: the same interactions per step.
    Setting("num_true_2", "sampled softmax, num_true=2 (batch/2)", ["--num_true=2"], batch_divisor=2),
    Setting("uniform", "sampled softmax, uniform sampler", ["--sampler=uniform"]),
    Setting("unigram", "sampled softmax, unigram sampler", ["--sampler=unigram"]),
    Setting("hard_negatives", "sampled softmax, 50 hard negatives", ["--num_hard_negatives=50"]),
    Setting("nce", "nce", ["--loss=nce"]),
    Setting("nce_focal", "nce, focal_gamma=2", ["--loss=nce", "--focal_gamma=2"]),
    Setting("pairwise_hinge", "pairwise hinge", ["--loss=pairwise_hinge"]),
    Setting("in_batch", "in-batch, corpus Q", ["--loss=in_batch"]),
    Setting("in_batch_no_log_q", "in-batch, no log-Q", ["--loss=in_batch", "--nosubtract_log_q"]),
    Setting("in_batch_streaming", "in-batch, streaming Q", ["--loss=in_batch", "--frequency_estimation=streaming"]),
    Setting("in_batch_hard_negatives", "in-batch, 50 hard negatives", ["--loss=in_batch", "--num_hard_negatives=50"]),
    Setting("cross_batch", "in-batch + cross-batch 4, corpus Q", ["--loss=in_batch", "--cross_batch_batches=4"]),
    Setting("cross_batch_streaming", "in-batch + cross-batch 4, streaming Q",
            ["--loss=in_batch", "--cross_batch_batches=4", "--frequency_estimation=streaming"]),
    Setting("mixed", "mixed: in-batch + log-uniform", ["--sampler=mixed"]),
    Setting("mixed_uniform", "mixed: in-batch + uniform", ["--sampler=mixed", "--mixed_corpus_sampler=uniform"]),
    Setting("mixed_unigram", "mixed: in-batch + unigram", ["--sampler=mixed", "--mixed_corpus_sampler=unigram"]),
    Setting("mixed_streaming", "mixed: in-batch (streaming Q) + log-uniform",
            ["--sampler=mixed", "--frequency_estimation=streaming"]),
]
SETTING_KEYS = [setting.key for setting in SETTINGS]

# The drift experiment: (key, name, flags, which item counts the corpus directories carry). "log" = the whole
# log's counts in both phases (stale); "phase" = each phase's own counts (an oracle no real system has); "old" =
# phase A's counts in both phases (a count table made before the drift and never refreshed; items it never saw have
# count 0); "old_plus_one" = the same + 1 (add-one smoothing, so that no count is 0).
COUNT_TABLES = {  # item_counts kind -> (phase A directory, phase B directory)
    "log": ("a", "b"), "phase": ("a_own", "b_own"), "old": ("a_own", "b_old"), "old_plus_one": ("a_own", "b_old_plus_one"),
}
# The mixed rows draw their corpus half uniformly, whose Q does not depend on counts, so only the in-batch half's
# Q differs between them.
MIXED_UNIFORM = ["--sampler=mixed", "--mixed_corpus_sampler=uniform"]
DRIFT_SETTINGS = [
    ("in_batch_streaming", "in-batch, streaming Q", ["--loss=in_batch", "--frequency_estimation=streaming"], "log"),
    ("in_batch_corpus", "in-batch, corpus Q (whole-log counts)", ["--loss=in_batch"], "log"),
    ("in_batch_phase_counts", "in-batch, corpus Q from each phase's counts (oracle)", ["--loss=in_batch"], "phase"),
    ("in_batch_old_counts", "in-batch, corpus Q from phase A's counts (counted before the drift)", ["--loss=in_batch"],
     "old"),
    ("in_batch_old_counts_plus_one", "in-batch, corpus Q from phase A's counts + 1", ["--loss=in_batch"],
     "old_plus_one"),
    ("in_batch_no_log_q", "in-batch, no log-Q", ["--loss=in_batch", "--nosubtract_log_q"], "log"),
    ("mixed_streaming", "mixed (uniform), streaming Q", [*MIXED_UNIFORM, "--frequency_estimation=streaming"], "log"),
    ("mixed_corpus", "mixed (uniform), corpus Q (whole-log counts)", MIXED_UNIFORM, "log"),
    ("mixed_no_log_q", "mixed (uniform), no log-Q", [*MIXED_UNIFORM, "--nosubtract_log_q"], "log"),
]
DRIFT_KEYS = [key for key, *_ in DRIFT_SETTINGS]
DATASETS = ("builtin", "movielens")

flags.DEFINE_string("output_dir", "docs", "Where compare_losses.md, .json and .png go.")
flags.DEFINE_string("work_dir", "", "Where the runs' model_dirs go (default: a new temporary directory).")
flags.DEFINE_string("cache_dir", sources.DEFAULT_CACHE_DIR, "The trainer's --cache_dir (built-in corpora, MovieLens).")
flags.DEFINE_list("data", list(DATASETS), "Data sets of part 1: builtin, movielens (empty: none).")
flags.DEFINE_list("only", [], f"Part 1 settings to run, by key (default all): {', '.join(SETTING_KEYS)}.")
flags.DEFINE_integer("num_items", 10_000, "Built-in corpus items (small enough for full softmax).")
flags.DEFINE_integer("num_users", 10_000, "Built-in corpus users.")
flags.DEFINE_integer("num_interactions", 400_000, "Built-in corpus interactions.")
flags.DEFINE_integer("num_sampled", 500, "Negatives per step for the corpus samplers.")
flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
flags.DEFINE_integer("epochs", 4, "Evaluation points (epochs of --steps_per_epoch steps); drift: per phase, halved.")
flags.DEFINE_integer("steps_per_epoch", 95, "Steps between evaluations (95 x 1024 is one pass over MovieLens).")
flags.DEFINE_list("repeat_seeds", ["43", "44"], "Seeds the --repeat_settings rerun with, to show run-to-run spread.")
flags.DEFINE_list("repeat_settings", ["sampled_softmax", "in_batch"], "Part 1 settings rerun with --repeat_seeds.")
flags.DEFINE_bool("drift", True, "Run part 2, the drift experiment.")
flags.DEFINE_list("drift_only", [], f"Drift settings to run, by key (default all): {', '.join(DRIFT_KEYS)}.")
flags.DEFINE_integer("drift_items", 10_000, "Drift corpus: items.")
flags.DEFINE_integer("drift_users", 10_000, "Drift corpus: users.")
flags.DEFINE_integer("drift_interactions", 200_000, "Drift corpus: interactions per phase.")
flags.DEFINE_string("code_version", "", "The commit the runs used, for the outputs (default: git's HEAD here, "
                    "+uncommitted when retrieval/, trainers/ or data/ differ from it).")
flags.DEFINE_bool("reuse_runs", False, "Keep finished runs found in --work_dir (those with a run_summary.json).")
FLAGS = flags.FLAGS

SEED = RunConfig.seed  # the trainer's default seed; --repeat_seeds add others


class RunFailed(RuntimeError):
    def __init__(self, message: str, last_line: str):
        super().__init__(message)
        self.last_line = last_line  # the trainer's own one-line reason


def train(model_dir: str, trainer_flags: Sequence[str], reuse: bool = True) -> float:
    """Runs `python -m trainers.train` into model_dir; returns its wall seconds (0 when a finished run was kept)."""
    if reuse and FLAGS.reuse_runs and os.path.isfile(os.path.join(model_dir, "run_summary.json")):
        return 0.0
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "trainers.train", f"--model_dir={model_dir}", *trainer_flags],
        cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise RunFailed(f"trainers.train {' '.join(trainer_flags)} failed:\n{result.stderr[-3000:]}", last_line)
    return time.time() - started


def read_run(model_dir: str, wall_seconds: float, examples_per_step: int) -> Dict:
    """A finished run's figures from its structured outputs: metrics.json, run_summary.json, TensorBoard."""
    with open(os.path.join(model_dir, "metrics.json")) as file:
        metrics = json.load(file)
    with open(os.path.join(model_dir, "run_summary.json")) as file:
        summary = json.load(file)
    train_scalars = read_scalars(os.path.join(model_dir, "tensorboard", "train"))
    eval_scalars = read_scalars(os.path.join(model_dir, "tensorboard", "eval"))
    steps_trained = summary["final_step"] - summary["restored_from_step"]
    speeds = [value for _, value in train_scalars.get("examples_per_second", [])]
    if speeds:  # the median of the run's own windows: robust to the first (tracing) window and to other jobs
        speed, speed_source = statistics.median(speeds), "tensorboard examples_per_second (median)"
    else:  # wall time of the whole subprocess: start-up and evaluation included, so a lower bound
        speed, speed_source = steps_trained * examples_per_step / max(wall_seconds, 1e-9), "wall time"
    model, baseline = metrics["model"], metrics["most_popular"]
    return {
        "recall_at_10": model["recall_at_10"],
        "recall_at_50": model["recall_at_50"],
        "recall_at_100": model["recall_at_100"],
        "baseline_recall_at_10": baseline["recall_at_10"],
        "baseline_recall_at_100": baseline["recall_at_100"],
        "examples_per_second": speed,
        "speed_source": speed_source,
        "final_step": summary["final_step"],
        "restored_from_step": summary["restored_from_step"],
        "final_loss": train_scalars["batch_loss"][-1][1] if "batch_loss" in train_scalars else None,
        "curve": [[step, value] for step, value in eval_scalars.get("recall_at_100", [])],
        "curve_at_10": [[step, value] for step, value in eval_scalars.get("recall_at_10", [])],
        "wall_seconds": wall_seconds,
        "model_dir": model_dir,
    }


def common_flags(data: str, seed: int = SEED, batch_size: Optional[int] = None, epochs: Optional[int] = None):
    """Flags every run of part 1 shares: the data, the budget and quiet outputs."""
    corpus = [f"--data={data}", f"--cache_dir={FLAGS.cache_dir}"]
    if data == "builtin":
        corpus += [f"--num_items={FLAGS.num_items}", f"--num_users={FLAGS.num_users}",
                   f"--num_interactions={FLAGS.num_interactions}"]
    return [
        *corpus,
        f"--seed={seed}",
        f"--num_sampled={FLAGS.num_sampled}",
        f"--batch_size={batch_size or FLAGS.batch_size}",
        f"--epochs={epochs or FLAGS.epochs}",
        f"--steps_per_epoch={FLAGS.steps_per_epoch}",
        "--log_every_steps=10",
        "--checkpoint_every_steps=0",  # at epoch ends only
        "--projector_items=0",
        "--noexport",
    ]


def run_setting(setting: Setting, data: str, model_dir: str, seed: int = SEED) -> Dict:
    batch_size = FLAGS.batch_size // setting.batch_divisor
    extra = list(setting.flags)
    wall = train(model_dir, [*common_flags(data, seed, batch_size), *extra])
    row = read_run(model_dir, wall, FLAGS.batch_size)  # batch_size x num_true interactions per step
    shown_flags = extra + ([f"--batch_size={batch_size}"] if batch_size != FLAGS.batch_size else [])
    return {"key": setting.key, "name": setting.name, "flags": " ".join(shown_flags) or "(defaults)", "seed": seed,
            **row}


def movielens_available(cache_dir: str) -> Optional[str]:
    """None when MovieLens 100K is prepared in the cache (fetching it first if needed), else why not."""
    from data import movielens
    from data.readers import DataError

    try:
        movielens.prepared(movielens.directory(cache_dir))
    except (movielens.DownloadError, DataError, OSError) as error:
        return str(error)
    return None


def run_part_one(data: str, settings: List[Setting], work_dir: str) -> Dict:
    if data == "movielens":
        reason = movielens_available(FLAGS.cache_dir)
        if reason:
            print(f"movielens: skipped: {reason}", flush=True)
            return {"available": False, "reason": reason, "rows": [], "repeats": []}
    rows, repeats = [], []
    for index, setting in enumerate(settings):
        row = run_setting(setting, data, os.path.join(work_dir, data, f"{index:02d}-{setting.key}"))
        print(f"{data:<9} {setting.name:<48} recall@100={row['recall_at_100']:.4f} "
              f"{row['examples_per_second']:>9,.0f} ex/s ({row['wall_seconds']:.0f}s)", flush=True)
        rows.append(row)
    for setting in settings:
        if setting.key not in FLAGS.repeat_settings:
            continue
        for seed in map(int, FLAGS.repeat_seeds):
            row = run_setting(setting, data, os.path.join(work_dir, data, f"seed{seed}-{setting.key}"), seed)
            print(f"{data:<9} {setting.name + f' (seed {seed})':<48} recall@100={row['recall_at_100']:.4f}", flush=True)
            repeats.append(row)
    return {"available": True, "reason": None, "rows": rows, "repeats": repeats}


# ---------------------------------------------------------------------------------------------- drift corpus


def _draw_phase(rng, popularity, item_topic, user_topics, user_weights, counts, noise):
    """Item ids [n] of one phase: per interaction, w.p. `noise` an item by global popularity, else a topic of the
    user's taste and an item of that topic by popularity (as data.synthetic draws, with a given popularity)."""
    num_items, num_users = len(popularity), len(counts)
    num_topics = int(item_topic.max()) + 1
    user = np.repeat(np.arange(num_users), counts)
    by_topic = np.lexsort((np.arange(num_items), item_topic))  # items ordered by (topic, id)
    topic_cumsum = np.cumsum(popularity[by_topic])
    topic_end = np.searchsorted(item_topic[by_topic], np.arange(num_topics), side="right")
    topic_start = np.r_[0, topic_end[:-1]]
    mass_before = np.where(topic_start > 0, topic_cumsum[np.maximum(topic_start - 1, 0)], 0.0)
    topic_mass = np.where(topic_end > topic_start, topic_cumsum[topic_end - 1] - mass_before, 0.0)
    slot = (rng.random(len(user))[:, None] > np.cumsum(user_weights[user], axis=1)).sum(axis=1)
    topic = user_topics[user, np.minimum(slot, user_topics.shape[1] - 1)]
    target = mass_before[topic] + rng.random(len(user)) * topic_mass[topic]
    item = by_topic[np.minimum(np.searchsorted(topic_cumsum, target, side="right"), topic_end[topic] - 1)]
    is_noise = rng.random(len(user)) < noise
    global_cumsum = np.cumsum(popularity)
    noise_target = rng.random(int(is_noise.sum())) * global_cumsum[-1]
    item[is_noise] = np.minimum(np.searchsorted(global_cumsum, noise_target, side="right"), num_items - 1)
    return user.astype(np.int64), item.astype(np.int64)


def write_drift_corpora(directory: str, num_items: int, num_users: int, interactions_per_phase: int, seed: int,
                        num_topics: int = 100, noise: float = 0.1, min_per_user: int = 5) -> Dict:
    """Writes four prepared corpus directories under `directory` and returns their description.

    Items have a topic and a Zipfian popularity (weight 1 / rank); users like 1 to 3 topics (Dirichlet weights)
    and keep their tastes and activity in both phases. Phase A draws items with popularity p_A; phase B with
    p_B = p_A under a random permutation of the items, so the topics (and what each user likes) stay and only
    which items are popular changes. Item ids are ranked by the whole log's training count (id 0 the most
    frequent, as the log-uniform sampler assumes). Held out in both phases' directories: each user's last
    phase-B interaction (so every run is evaluated on the same phase-B rows).

        a/, b/              phase A / B training rows; item_counts.npy = the whole log's counts (A + B train)
        a_own/, b_own/      the same rows; item_counts.npy = that phase's own counts (the oracle)
        b_old/              phase B's rows; item_counts.npy = phase A's counts (a table made before the drift)
        b_old_plus_one/     phase B's rows; item_counts.npy = phase A's counts + 1
    """
    from data import corpus, records

    rng = np.random.default_rng(seed)
    item_topic = rng.integers(0, num_topics, num_items)
    popularity_a = 1.0 / np.arange(1, num_items + 1, dtype=np.float64)
    popularity_b = popularity_a[rng.permutation(num_items)]
    user_topics = rng.integers(0, num_topics, (num_users, 3))
    user_weights = rng.dirichlet(np.ones(3), num_users) * (np.arange(3) < rng.integers(1, 4, num_users)[:, None])
    user_weights /= user_weights.sum(axis=1, keepdims=True)
    activity = rng.lognormal(0.0, 0.8, num_users)
    extra = interactions_per_phase - num_users * min_per_user
    if extra < 0:
        raise app.UsageError(f"--drift_interactions={interactions_per_phase} is below {min_per_user} per user")
    counts = min_per_user + rng.multinomial(extra, activity / activity.sum())  # [num_users], the same in both phases
    position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    phases = {}
    for phase, popularity, start in (("a", popularity_a, 1_600_000_000), ("b", popularity_b, 1_700_000_000)):
        user, item = _draw_phase(rng, popularity, item_topic, user_topics, user_weights, counts, noise)
        phases[phase] = {"user_id": user, "item_id": item, "timestamp": start + user * 10_000 + position}
    is_eval = position == np.repeat(counts, counts) - 1  # each user's last phase-B interaction
    train_b = {name: values[~is_eval] for name, values in phases["b"].items()}
    eval_b = {name: values[is_eval] for name, values in phases["b"].items()}
    counts_a = np.bincount(phases["a"]["item_id"], minlength=num_items)
    counts_b = np.bincount(train_b["item_id"], minlength=num_items)
    order = np.lexsort((np.arange(num_items), -(counts_a + counts_b)))  # new id -> old id, by whole-log count
    new_id = np.empty(num_items, np.int64)
    new_id[order] = np.arange(num_items)
    for columns in (phases["a"], train_b, eval_b):
        columns["item_id"] = new_id[columns["item_id"]]
    counts_a, counts_b = counts_a[order], counts_b[order]
    whole = counts_a + counts_b
    layout = {"a": (phases["a"], whole), "b": (train_b, whole), "a_own": (phases["a"], counts_a),
              "b_own": (train_b, counts_b), "b_old": (train_b, counts_a), "b_old_plus_one": (train_b, counts_a + 1)}
    for name, (train_rows, item_counts) in layout.items():
        path = os.path.join(directory, name)
        if os.path.isfile(os.path.join(path, "metadata.json")):
            continue
        os.makedirs(path, exist_ok=True)
        records.write_interactions(path, "train", train_rows, 2)
        records.write_interactions(path, "eval", eval_b, 1)
        np.save(os.path.join(path, "item_counts.npy"), item_counts.astype(np.int64))
        corpus.write_metadata(
            path, num_items=num_items, num_users=num_users, num_train=len(train_rows["item_id"]),
            num_eval=len(eval_b["item_id"]),
            description=f"compare_losses drift corpus, phase {name[0].upper()} ("
                        f"{ {'a': 'whole-log', 'b': 'whole-log', 'b_old': 'phase A', 'b_old_plus_one': 'phase A + 1'}.get(name, 'own-phase')} item "
                        f"counts), seed {seed}",
        )
    top_b = np.argsort(-counts_b, kind="stable")[:100]
    return {
        "directories": {name: os.path.join(directory, name) for name in layout},
        "num_items": num_items, "num_users": num_users, "interactions_per_phase": int(counts.sum()),
        "num_train_a": int(len(phases["a"]["item_id"])), "num_train_b": int(len(train_b["item_id"])),
        "num_eval": int(len(eval_b["item_id"])),
        "counts_a": counts_a, "counts_b": counts_b,
        # How much the popular set moved: the share of phase B's 100 most frequent items among phase A's 100.
        "top100_overlap": float(np.isin(top_b, np.argsort(-counts_a, kind="stable")[:100]).mean()),
    }


def q_error(model_dir: str, counts_b: np.ndarray, counts_whole: np.ndarray, batch_size: int, streaming: bool):
    """Median |ln(Q used / Q true)| over phase B's 100 most frequent items at the end of phase B, Q true being
    batch_size x the item's phase-B frequency. Q used: the streaming estimate in the run's newest checkpoint,
    else batch_size x the whole-log frequency the corpus-count Q reads."""
    true_q = batch_size * counts_b / counts_b.sum()
    top = np.argsort(-counts_b, kind="stable")[:100]
    if streaming:
        import tensorflow as tf

        checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        reader = tf.train.load_checkpoint(checkpoint)
        names = {name.split("/frequency/")[1].split("/")[0]: name
                 for name, _ in tf.train.list_variables(checkpoint) if "/frequency/" in name}
        weight, gap = reader.get_tensor(names["weight"]), reader.get_tensor(names["gap"])
        used = np.where(gap > 0, weight / np.where(gap > 0, gap, 1.0), 0.0)
    else:
        used = batch_size * counts_whole / counts_whole.sum()
    used = np.maximum(used, MIN_EXPECTED_COUNT)  # a count of 0 counts as the floor the streaming Q has
    return float(np.median(np.abs(np.log(used[top] / true_q[top]))))


def run_drift(work_dir: str) -> Dict:
    settings = [entry for entry in DRIFT_SETTINGS if not FLAGS.drift_only or entry[0] in FLAGS.drift_only]
    corpora = write_drift_corpora(os.path.join(work_dir, "drift", "corpus"), FLAGS.drift_items, FLAGS.drift_users,
                                  FLAGS.drift_interactions, SEED)
    directories = corpora["directories"]
    phase_epochs = max(FLAGS.epochs // 2, 1)
    budget = [f"--batch_size={FLAGS.batch_size}", f"--num_sampled={FLAGS.num_sampled}",
              f"--steps_per_epoch={FLAGS.steps_per_epoch}", "--log_every_steps=10", "--checkpoint_every_steps=0",
              "--projector_items=0", "--noexport", f"--seed={SEED}"]
    rows = []
    for key, name, extra, counts in settings:
        model_dir = os.path.join(work_dir, "drift", key)
        a_dir, b_dir = (directories[name] for name in COUNT_TABLES[counts])
        phase_a_file, phase_b_file = os.path.join(model_dir, "phase_a.json"), os.path.join(model_dir, "phase_b.json")
        if FLAGS.reuse_runs and os.path.isfile(phase_b_file):
            with open(phase_a_file) as file_a, open(phase_b_file) as file_b:
                phase_a, phase_b = json.load(file_a), json.load(file_b)
            if "failed" not in phase_b:
                phase_b = read_run(model_dir, 0.0, FLAGS.batch_size)  # the run's own files, read again
        else:
            if os.path.isdir(model_dir):
                raise app.UsageError(f"{model_dir} exists: the drift protocol needs a new model_dir per setting")
            wall = train(model_dir, [f"--data={a_dir}", f"--epochs={phase_epochs}", *budget, *extra], reuse=False)
            phase_a = read_run(model_dir, wall, FLAGS.batch_size)
            with open(phase_a_file, "w") as file:  # phase B rewrites metrics.json and run_summary.json
                json.dump(phase_a, file)
            try:
                wall = train(model_dir, [f"--data={b_dir}", f"--epochs={2 * phase_epochs}", *budget, *extra],
                             reuse=False)
                phase_b = read_run(model_dir, wall, FLAGS.batch_size)
            except RunFailed as error:  # a setting the trainer refuses or stops (e.g. a non-finite loss) is a result
                phase_b = {"failed": error.last_line}
            with open(phase_b_file, "w") as file:
                json.dump(phase_b, file)
        with open(os.path.join(model_dir, "config.json")) as file:
            config_data = json.load(file)["data"]["data"]
        streaming = "--frequency_estimation=streaming" in extra
        counts_read = {"log": corpora["counts_a"] + corpora["counts_b"], "phase": corpora["counts_b"],
                       "old": corpora["counts_a"], "old_plus_one": corpora["counts_a"] + 1}[counts]
        subtracts = "--nosubtract_log_q" not in extra
        row = {
            "key": key, "name": name, "flags": " ".join(extra), "item_counts": counts,
            "phase_a": phase_a, "phase_b": phase_b,
            "switch_step": phase_a["final_step"],
            "failed": phase_b.get("failed"),
            "config_data_after_b": config_data,
            "q_error_top100": q_error(model_dir, corpora["counts_b"], counts_read, FLAGS.batch_size, streaming)
            if subtracts else None,
        }
        outcome = (f"stopped: {phase_b['failed']}" if "failed" in phase_b else
                   f"{phase_b['recall_at_100']:.4f} (restored from step {phase_b['restored_from_step']})")
        print(f"drift     {name:<48} A recall@100={phase_a['recall_at_100']:.4f} -> B {outcome}", flush=True)
        rows.append(row)
    description = {name: value for name, value in corpora.items() if name not in ("counts_a", "counts_b")}
    return {"corpus": description, "phase_epochs": phase_epochs, "steps_per_epoch": FLAGS.steps_per_epoch,
            "rows": rows}


# ---------------------------------------------------------------------------------------------- outputs


def _spread(results: Dict, key: str) -> Optional[Dict]:
    """Seed spread of one setting's recall: {seeds, recall_at_10: [..], recall_at_100: [..]} or None."""
    rows = [row for row in results["rows"] + results["repeats"] if row["key"] == key]
    if len(rows) < 2:
        return None
    return {"seeds": [row["seed"] for row in rows],
            "recall_at_10": [row["recall_at_10"] for row in rows],
            "recall_at_100": [row["recall_at_100"] for row in rows]}


def _format_number(value, pattern):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, pattern)


def markdown(outputs: Dict) -> str:
    lines = [
        "# Losses, samplers and switches compared for the same budget",
        "",
        f"Command: `{outputs['command']}` (code: {outputs['code_version']})",
        "",
        f"Every run is `python -m trainers.train` in a subprocess, read back from its metrics.json, "
        f"run_summary.json and TensorBoard events (`scripts/compare_losses.py`; the figures are also in "
        f"`compare_losses.json`). Budget of every run: {outputs['epochs']} epochs x {outputs['steps_per_epoch']} "
        f"steps of {outputs['batch_size']} interactions, lazy Adam 0.005, dim 64, seed {SEED}; "
        f"num_sampled={outputs['num_sampled']} for the corpus samplers (also the corpus half of mixed). Held-out: "
        "each user's last interaction, exact ranking over the whole corpus (the user's own training items "
        "included). examples/s: the median of the run's TensorBoard `examples_per_second` windows, on a 2-core "
        "machine shared with other jobs: read them as rough (scripts/bench.py measures speed side by side).",
        "",
    ]
    for data, results in outputs["datasets"].items():
        title = {"builtin": "Built-in corpus", "movielens": "MovieLens 100K"}.get(data, data)
        lines += [f"## {title}", ""]
        if not results["available"]:
            lines += [f"Skipped: {results['reason']}", ""]
            continue
        rows = results["rows"]
        corpus = (f"{outputs['num_items']:,} items, {outputs['num_users']:,} users, "
                  f"{outputs['num_interactions']:,} interactions (built-in synthetic, seed {SEED})"
                  if data == "builtin" else "943 users, 1,680 item ids, 99,057 training ratings (see README)")
        lines += [f"Corpus: {corpus}. Most-popular baseline: recall@10 {rows[0]['baseline_recall_at_10']:.4f}, "
                  f"recall@100 {rows[0]['baseline_recall_at_100']:.4f}.", ""]
        full = next((row for row in rows if row["key"] == "full_softmax"), None)
        lines += ["| # | setting | flags | recall@10 | recall@50 | recall@100 | recall@100 vs full softmax | "
                  "examples/s |", "|---:|---|---|---:|---:|---:|---:|---:|"]
        for index, row in enumerate(rows, start=1):
            relative = f"{row['recall_at_100'] / full['recall_at_100']:.0%}" if full else "n/a"
            lines.append(
                f"| {data[0].upper()}{index} | {row['name']} | `{row['flags']}` | {row['recall_at_10']:.4f} | "
                f"{row['recall_at_50']:.4f} | {row['recall_at_100']:.4f} | {relative} | "
                f"{row['examples_per_second']:,.0f} |"
            )
        lines.append("")
        for key in FLAGS.repeat_settings:
            spread = _spread(results, key)
            if spread:
                name = next(row["name"] for row in rows if row["key"] == key)
                lines.append(
                    f"Run-to-run spread, {name}, seeds {', '.join(map(str, spread['seeds']))}: recall@10 "
                    f"{min(spread['recall_at_10']):.4f} to {max(spread['recall_at_10']):.4f}, recall@100 "
                    f"{min(spread['recall_at_100']):.4f} to {max(spread['recall_at_100']):.4f}"
                    + (" (the seed also draws the corpus)." if data == "builtin" else " (initialisation, "
                       "shuffling and sampling; the data are the same).")
                )
        lines.append("")
    lines += _drift_markdown(outputs.get("drift"))
    lines += [
        "Not compared: logged negatives (`--logged_negative_weight`). They need a log of items shown and not "
        "chosen, carried to the trainer as `negative_ids`; neither corpus has one and `data.prepare` has no "
        "`--negative_column` yet, so no run here can use them.",
        "",
    ]
    return "\n".join(lines)


def _drift_markdown(drift: Optional[Dict]) -> List[str]:
    if not drift:
        return []
    corpus = drift["corpus"]
    phase_steps = drift["phase_epochs"] * drift["steps_per_epoch"]
    lines = [
        "## Drift: popularity permuted half-way through training",
        "",
        f"Corpus (written by the script, `write_drift_corpora`): {corpus['num_items']:,} items in 100 topics with "
        f"Zipfian popularity, {corpus['num_users']:,} users who like 1 to 3 topics, "
        f"{corpus['interactions_per_phase']:,} interactions per phase. Phase B draws from the same users and "
        f"topics with the items' popularity randomly permuted: {corpus['top100_overlap']:.0%} of phase B's 100 "
        "most frequent items were among phase A's. Both phase directories hold out each user's last phase-B "
        "interaction and carry the whole log's item counts (A + B), which is what a corpus-count Q reads: too low "
        "for the items phase B made popular, too high for those it demoted.",
        "",
        f"Protocol: `python -m trainers.train --data=<phase A dir> --epochs={drift['phase_epochs']} "
        f"--steps_per_epoch={drift['steps_per_epoch']} --model_dir=M <flags>` ({phase_steps} steps), then the "
        f"same command with `--data=<phase B dir> --epochs={2 * drift['phase_epochs']}` and the same `M`. The "
        "second run restores A's newest checkpoint (weights, optimizer, streaming estimates) and trains "
        f"{phase_steps} more steps on B, starting at A's step (its run_summary.json `restored_from_step`); it "
        "rewrites config.json with phase B's directory. The oracle row carries each phase's own counts instead, "
        "and the phase-A-counts rows phase A's counts in both phases (a count table made before the drift, in "
        "which items new in phase B have count 0; the + 1 row adds one to every count). "
        "The mixed rows draw their corpus half uniformly, whose Q needs no counts, so only the in-batch half's "
        "Q differs between them. Q error: median |ln(Q used / Q true)| over phase B's 100 most frequent items at "
        "the end, Q true = batch size x the item's phase-B training frequency; for streaming, the estimate in "
        "the final checkpoint (Q floored at 1e-6 where it is 0).",
        "",
        "| # | setting | recall@100 after A | restored from step | recall@10 after B | recall@50 after B | "
        "recall@100 after B | Q error after B |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for index, row in enumerate(drift["rows"], start=1):
        a, b = row["phase_a"], row["phase_b"]
        if row.get("failed"):
            lines.append(
                f"| D{index} | {row['name']} | {a['recall_at_100']:.4f} | - | phase B stopped: {row['failed']} | | | "
                f"{_format_number(row['q_error_top100'], '.2f')} |"
            )
            continue
        lines.append(
            f"| D{index} | {row['name']} | {a['recall_at_100']:.4f} | {b['restored_from_step']} | "
            f"{b['recall_at_10']:.4f} | {b['recall_at_50']:.4f} | {b['recall_at_100']:.4f} | "
            f"{_format_number(row['q_error_top100'], '.2f')} |"
        )
    first = next((row["phase_b"] for row in drift["rows"] if not row.get("failed")), None)
    if first:
        lines += ["", f"Most-popular baseline on the phase-B held-out rows, ranking by the whole log's counts: "
                      f"recall@10 {first['baseline_recall_at_10']:.4f}, recall@100 "
                      f"{first['baseline_recall_at_100']:.4f}."]
    lines.append("")
    return lines


def plot(outputs: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [(data, results) for data, results in outputs["datasets"].items() if results["rows"]]
    drift = outputs.get("drift")
    columns = max(len(datasets), 1)
    rows = bool(datasets) + bool(drift and drift["rows"])
    if not rows:
        return
    figure = plt.figure(figsize=(7 * columns, 5.5 * rows))
    for index, (data, results) in enumerate(datasets):
        axes = figure.add_subplot(rows, columns, index + 1)
        for number, row in enumerate(results["rows"], start=1):
            color = "tab:red" if "streaming" in row["key"] or "cross_batch" in row["key"] or "hard" in row["key"] \
                else "tab:blue"
            axes.scatter(row["examples_per_second"], row["recall_at_100"], color=color, s=18)
            axes.annotate(f"{data[0].upper()}{number}", (row["examples_per_second"], row["recall_at_100"]),
                          fontsize=7, xytext=(3, 2), textcoords="offset points")
        axes.axhline(results["rows"][0]["baseline_recall_at_100"], color="gray", linestyle=":", linewidth=1)
        axes.set_xscale("log")
        axes.set_xlabel("training examples/s (median of TensorBoard windows, shared 2-core machine)")
        axes.set_ylabel("held-out recall@100")
        axes.set_title(f"{data}: recall@100 vs training speed\n(labels: rows of compare_losses.md; red: streaming, "
                       "cross-batch, hard negatives; dotted: most popular)", fontsize=8)
        axes.grid(alpha=0.3)
    if drift and drift["rows"]:
        colors = plt.cm.tab10.colors
        for panel, (curve_key, label) in enumerate((("curve_at_10", "recall@10"), ("curve", "recall@100"))):
            axes = figure.add_subplot(rows, 2, 2 * rows - 1 + panel)
            for index, row in enumerate(drift["rows"]):
                if row.get("failed"):
                    continue
                curve = sorted({step: value for step, value in row["phase_b"].get(curve_key, [])}.items())
                steps, values = zip(*curve) if curve else ((), ())
                axes.plot(steps, values, marker="o", markersize=3, color=colors[index % len(colors)],
                          linestyle="-" if row["key"].startswith("in_batch") else "--",
                          label=f"D{index + 1} {row['name']}")
            axes.axvline(drift["rows"][0]["switch_step"], color="gray", linestyle=":", linewidth=1)
            axes.text(drift["rows"][0]["switch_step"], axes.get_ylim()[1], " phase A -> B", fontsize=8, va="top")
            axes.set_xlabel("training step")
            axes.set_ylabel(f"{label} on phase-B held-out rows")
            axes.set_title(f"Drift: item popularity permuted at the phase switch ({label})", fontsize=9)
            axes.grid(alpha=0.3)
            if panel == 0:
                axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def code_version() -> str:
    if FLAGS.code_version:
        return FLAGS.code_version

    def git(*arguments):
        result = subprocess.run(["git", *arguments], cwd=REPO_ROOT, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else None

    head = git("rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown"
    changed = git("status", "--porcelain", "--", "retrieval", "trainers", "data")
    return head + ("+uncommitted" if changed else "")


def main(argv):
    logging.set_verbosity(logging.WARNING)  # TensorBoard's event reader logs every file it opens
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name, values, known in (("only", FLAGS.only, SETTING_KEYS), ("drift_only", FLAGS.drift_only, DRIFT_KEYS),
                                ("data", FLAGS.data, DATASETS)):
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise app.UsageError(f"--{name}={','.join(unknown)}: unknown; expected some of {', '.join(known)}")
    settings = [setting for setting in SETTINGS if not FLAGS.only or setting.key in FLAGS.only]
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="compare_losses-")
    if not FLAGS.reuse_runs and os.path.isdir(work_dir) and os.listdir(work_dir):
        # A trainer run into an existing model_dir restores it and trains no further: its figures would be old.
        raise app.UsageError(f"--work_dir={work_dir} holds earlier runs; pass --reuse_runs or a new directory")
    outputs = {
        "command": "python scripts/compare_losses.py " + " ".join(
            argument for argument in sys.argv[1:] if not argument.startswith("--code_version")),
        "work_dir": work_dir,
        "code_version": code_version(),
        **{name: getattr(FLAGS, name) for name in ("num_items", "num_users", "num_interactions", "num_sampled",
                                                   "batch_size", "epochs", "steps_per_epoch")},
        "datasets": {data: run_part_one(data, settings, work_dir) for data in FLAGS.data},
        "drift": run_drift(work_dir) if FLAGS.drift else None,
    }
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "compare_losses.json"), "w") as file:
        json.dump(outputs, file, indent=1)
    table = markdown(outputs)
    with open(os.path.join(FLAGS.output_dir, "compare_losses.md"), "w") as file:
        file.write(table)
    plot(outputs, os.path.join(FLAGS.output_dir, "compare_losses.png"))
    print(table)


if __name__ == "__main__":
    app.run(main)
