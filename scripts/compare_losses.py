"""Trains each loss / switch setting on the built-in corpus for the same budget and compares them.

    .venv/bin/python scripts/compare_losses.py --output_dir=docs

Each setting is a real `python -m trainers.train` run (its own model_dir, TensorBoard events, checkpoints).
Writes <output_dir>/compare_losses.md (recall@10/100 held-out, final loss, examples/sec, each run's flags) and
<output_dir>/compare_losses.png (held-out recall@100 against training step).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import retrieval  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from trainers.event_reader import read_scalars  # noqa: E402

# (name, trainer flags): one change at a time from the default sampled softmax.
SETTINGS = [
    ("full_softmax", ["--loss=full_softmax"]),
    ("sampled_softmax (log-uniform, log-Q)", []),
    ("sampled_softmax, no log-Q", ["--nosubtract_log_q"]),
    ("sampled_softmax, keep accidental hits", ["--noremove_accidental_hits"]),
    ("sampled_softmax, label_smoothing=0.1", ["--label_smoothing=0.1"]),
    ("sampled_softmax, uniform sampler", ["--sampler=uniform"]),
    ("sampled_softmax, unigram sampler", ["--sampler=unigram"]),
    ("sampled_softmax, mixed sampler", ["--sampler=mixed"]),
    ("in_batch (log-Q from batch counts)", ["--loss=in_batch"]),
    ("in_batch, no log-Q", ["--loss=in_batch", "--nosubtract_log_q"]),
    ("nce (log-Q)", ["--loss=nce"]),
    ("nce, focal_gamma=2", ["--loss=nce", "--focal_gamma=2"]),
    ("pairwise_hinge", ["--loss=pairwise_hinge"]),
]

flags.DEFINE_string("output_dir", "docs", "Where compare_losses.md and compare_losses.png go.")
flags.DEFINE_string("work_dir", "", "Where the runs' model_dirs go (default: a temporary directory).")
flags.DEFINE_integer("num_items", 10_000, "Corpus items (small enough for full softmax).")
flags.DEFINE_integer("num_users", 10_000, "Corpus users.")
flags.DEFINE_integer("num_interactions", 400_000, "Corpus interactions.")
flags.DEFINE_integer("num_sampled", 500, "Negatives per step for the sampled losses.")
flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
flags.DEFINE_integer("epochs", 8, "Evaluation points (epochs of --steps_per_epoch steps).")
flags.DEFINE_integer("steps_per_epoch", 95, "Steps between evaluations.")
flags.DEFINE_bool("reuse_runs", False, "Keep finished runs found in --work_dir (those with a metrics.json).")
flags.DEFINE_list("only", [], "Run only the settings whose names contain one of these strings.")
FLAGS = flags.FLAGS


def run_setting(name, extra_flags, model_dir, cache_dir):
    common = [
        f"--model_dir={model_dir}",
        f"--cache_dir={cache_dir}",
        f"--num_items={FLAGS.num_items}",
        f"--num_users={FLAGS.num_users}",
        f"--num_interactions={FLAGS.num_interactions}",
        f"--num_sampled={FLAGS.num_sampled}",
        f"--batch_size={FLAGS.batch_size}",
        f"--epochs={FLAGS.epochs}",
        f"--steps_per_epoch={FLAGS.steps_per_epoch}",
        "--log_every_steps=25",
        "--projector_items=0",
    ]
    started = time.time()
    if not (FLAGS.reuse_runs and os.path.isfile(os.path.join(model_dir, "metrics.json"))):
        result = subprocess.run(
            [sys.executable, "-m", "trainers.train", *common, *extra_flags],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"setting {name!r} failed:\n{result.stderr[-3000:]}")
    final = json.load(open(os.path.join(model_dir, "metrics.json")))
    train_scalars = read_scalars(os.path.join(model_dir, "tensorboard", "train"))
    eval_scalars = read_scalars(os.path.join(model_dir, "tensorboard", "eval"))
    return {
        "name": name,
        "flags": " ".join(extra_flags) or "(defaults)",
        "recall_at_10": final["model"]["recall_at_10"],
        "recall_at_100": final["model"]["recall_at_100"],
        "baseline_recall_at_100": final["most_popular"]["recall_at_100"],
        "final_loss": train_scalars["batch_loss"][-1][1],
        "examples_per_second": statistics.median(value for _, value in train_scalars["examples_per_second"]),
        "curve": eval_scalars["recall_at_100"],
        "seconds": time.time() - started,
    }


def markdown(results, command):
    full = next((row for row in results if row["name"] == "full_softmax"), None)
    lines = [
        "# Loss comparison on the built-in corpus",
        "",
        f"Command: `{command}`",
        "",
        f"Corpus: {FLAGS.num_items} items, {FLAGS.num_users} users, {FLAGS.num_interactions} interactions "
        f"(built-in synthetic, seed 42); every run: batch {FLAGS.batch_size}, "
        f"{FLAGS.epochs * FLAGS.steps_per_epoch} steps, lazy Adam 0.005, dim 64, "
        f"num_sampled={FLAGS.num_sampled} for the sampled losses. Held-out: each user's last interaction, exact "
        f"full-corpus ranking. Most-popular baseline recall@100: {results[0]['baseline_recall_at_100']:.4f}.",
        "",
        "| setting | flags | recall@10 | recall@100 | vs full softmax | final loss | examples/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        relative = f"{row['recall_at_100'] / full['recall_at_100']:.0%}" if full else "n/a"
        lines.append(
            f"| {row['name']} | `{row['flags']}` | {row['recall_at_10']:.4f} | {row['recall_at_100']:.4f} | "
            f"{relative} | {row['final_loss']:.4f} | {row['examples_per_second']:,.0f} |"
        )
    lines += [
        "",
        "Final losses are not comparable across losses (different candidate sets and heads). examples/s are from",
        "the runs' own TensorBoard scalars on a shared 2-core machine where other jobs came and went: read them as",
        "rough; scripts/bench.py measures throughput side by side.",
        "",
    ]
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 6))
    colors = plt.cm.tab20.colors  # 20 distinct colours: the default cycle repeats after 10
    for index, row in enumerate(results):
        steps, values = zip(*row["curve"])
        axes.plot(
            steps, values, marker="o", markersize=3, label=row["name"], color=colors[index % len(colors)],
            linestyle="-" if index % 2 == 0 else "--",
        )
    axes.set_xlabel("training step")
    axes.set_ylabel("held-out recall@100")
    axes.set_title("Recall@100 vs step, same budget for every loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv):
    del argv
    settings = [(name, extra) for name, extra in SETTINGS if not FLAGS.only or any(part in name for part in FLAGS.only)]
    if not settings:
        raise app.UsageError(f"--only={','.join(FLAGS.only)} matches no setting")
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="compare_losses-")
    cache_dir = os.path.join(work_dir, "cache")
    results = []
    for index, (name, extra) in enumerate(settings):
        row = run_setting(name, extra, os.path.join(work_dir, f"run{index:02d}"), cache_dir)
        print(f"{name:<42} recall@100={row['recall_at_100']:.4f} ({row['seconds']:.0f}s)", flush=True)
        results.append(row)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    command = "python scripts/compare_losses.py " + " ".join(sys.argv[1:])
    table = markdown(results, command.strip())
    with open(os.path.join(FLAGS.output_dir, "compare_losses.md"), "w") as file:
        file.write(table)
    plot(results, os.path.join(FLAGS.output_dir, "compare_losses.png"))
    print(table)


if __name__ == "__main__":
    app.run(main)
