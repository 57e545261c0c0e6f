"""Training throughput against what users pick instead, and peak memory, at 100K, 1M and 10M items.

    .venv/bin/python scripts/bench.py                    # the table, written to docs/benchmarks.md
    .venv/bin/python scripts/bench.py --sizes=1000000    # one size

Rows, each measured in a process of its own (so its peak resident memory is its own), repeats interleaved so a
burst of load from other processes hurts every row alike; a row shows the median and the min-max of its repeats:
  trainer: <flags>            `python -m trainers.train` on the built-in corpus, the command users run, with the
                              flags shown; examples/s is the trainer's own TensorBoard `examples_per_second`
                              (median of its windows after the warm-up steps, 50 steps each: the default
                              logging cadence). The user-id model
                              (--query_features=user_id) unless the flags name other query features: the
                              history rows run the trainer's default history model (histories of up to 50
                              items): one on the benchmark corpus (--num_users, by default the built-in
                              corpus's 20,000 users of 50 interactions: histories of some 28 items on average),
                              one whose own --num_users (2,000 users of 500 interactions) fills nearly every
                              history to 50 items. A row's --num_users names its own corpus; the report gives each
                              history row's mean history length
  tf.nn + Adagrad, cached     the loop the TFRS tutorials teach, written by hand: the split read into memory,
                              `shuffle(100_000).batch(B).cache()`, embedding tables, a tf.function step on
                              tf.nn.sampled_softmax_loss, Keras Adagrad(0.1)
  TFRS in-batch Retrieval     tfrs.Model + tfrs.tasks.Retrieval (in-batch softmax) over Embedding towers,
                              Keras Adagrad(0.1), `fit` on the same cached batches
  matmul limit                the step's three matrix products (forward [B, D] x [D, C] logits, and the two
                              backward products), C = num_sampled + 1, at this machine's measured rate: no
                              sampled-softmax step can be faster
Ratios are taken between rows of the same run: each trainer row against the hand-written loop, the in-batch
rows against TFRS, and every sampled-softmax row as its share of the matmul limit. --breakdown adds where the
CPU time of one trainer step goes (scripts/profile_step.py).
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import retrieval  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from data import sources  # noqa: E402

import profile_step  # noqa: E402  (scripts/, beside this file)

HISTORY_VARIANT = "--query_features=history --history_length=50"  # the history model's row
# The history model on histories of 50 items: 2,000 users of 500 interactions, 90% of the rows' histories full
# (47 items on average), beside the benchmark corpus's 28.
FULL_HISTORY_VARIANT = HISTORY_VARIANT + " --num_users=2000"

flags.DEFINE_list("sizes", ["100000", "1000000", "10000000"], "Item counts to measure.")
flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
flags.DEFINE_integer("num_sampled", 1000, "Sampled negatives per step.")
flags.DEFINE_integer("embedding_dim", 64, "Embedding size.")
flags.DEFINE_integer("num_users", 20_000, "Users in the benchmark corpus (the built-in corpus's 20,000: users of 50 "
                     "interactions, histories of some 28 items on average). A row whose flags hold --num_users runs "
                     "on a corpus of that many users.")
flags.DEFINE_integer("num_interactions", 1_000_000, "Interactions in the benchmark corpus.")
flags.DEFINE_integer("steps", 200, "Measured steps per configuration (after warm-up).")
flags.DEFINE_integer("warmup_steps", 50, "Steps run before timing (tracing, first allocations).")
flags.DEFINE_integer("dense_steps", 4, "Measured steps for full softmax, whose step is O(items).")
flags.DEFINE_integer("full_softmax_max_items", 1_000_000, "Largest corpus where full softmax is measured.")
flags.DEFINE_string("cache_dir", sources.DEFAULT_CACHE_DIR, "Corpus cache (the trainer's --cache_dir).")
flags.DEFINE_string("output", "docs/benchmarks.md", "Markdown report path ('' to skip); a .json beside it.")
flags.DEFINE_integer("repeats", 3, "Interleaved measurements per row.")
flags.DEFINE_list("trainer_variants", ["", "--optimizer=adagrad", "--loss=in_batch", "--loss=in_batch --optimizer=adagrad",
                                       "--loss=full_softmax", HISTORY_VARIANT, FULL_HISTORY_VARIANT],
                  "Trainer flag sets, one row each ('' = defaults of the user-id model).")
flags.DEFINE_bool("breakdown", True, "Also measure where a trainer step's CPU time goes (scripts/profile_step.py).")
flags.DEFINE_string("child", "", "Internal: run one measurement described by this JSON and print its result.")
FLAGS = flags.FLAGS

# Steps per examples_per_second window of the trainer rows: the trainer's default --log_every_steps, so that a row
# runs as a user's run does (its automatic steps_per_execution follows the logging cadence: 50 steps per call).
TIMED_WINDOW = 50
USER_ID_MODEL = "--query_features=user_id"  # what the trainer rows train unless their flags say otherwise


def _corpus(num_items, num_users=None):
    from data import builtin, synthetic

    config = synthetic.SyntheticConfig(
        num_items=num_items, num_users=num_users or FLAGS.num_users, num_interactions=FLAGS.num_interactions, seed=42
    )
    return builtin.prepare(config, FLAGS.cache_dir)


def _num_users(variant):
    """The --num_users a row's flags name, or the benchmark corpus's."""
    values = [flag.split("=", 1)[1] for flag in variant.split() if flag.startswith("--num_users=")]
    return int(values[-1]) if values else FLAGS.num_users


def _history_length(variant):
    values = [flag.split("=", 1)[1] for flag in variant.split() if flag.startswith("--history_length=")]
    return int(values[-1]) if values else 50


def mean_history(num_items, num_users, history_length):
    """The mean number of items in a training row's history (of up to history_length) on a benchmark corpus."""
    import numpy as np

    from data import history, pipeline

    columns = pipeline.read_in_memory(_corpus(num_items, num_users).train_files)
    log = history.history_log(columns["user_id"], columns["item_id"], columns["timestamp"])
    _, available = history.history_positions(log, columns["user_id"], columns["timestamp"])
    return float(np.mean(np.minimum(available, history_length)))


def _trainer_flags(spec):
    """The trainer command line of a row: the benchmark corpus (the cache the bench made), its step budget."""
    steps = spec["warmup"] + spec["steps"]
    return [
        f"--cache_dir={FLAGS.cache_dir}", f"--num_items={spec['num_items']}", f"--num_users={spec['num_users']}",
        f"--num_interactions={FLAGS.num_interactions}", "--seed=42", f"--batch_size={FLAGS.batch_size}",
        f"--num_sampled={FLAGS.num_sampled}", f"--embedding_dim={FLAGS.embedding_dim}", "--epochs=1",
        f"--steps_per_epoch={steps}", f"--log_every_steps={_window(spec)}",
        "--checkpoint_every_steps=0",
        "--noexport", "--projector_items=0", "--eval_max_users=200", USER_ID_MODEL, *spec["variant"].split(),
    ]


def _window(spec):
    return min(TIMED_WINDOW, spec["steps"])


def _measure_trainer(spec):
    """Runs trainers.train as the only child of this process, so the children's peak resident memory is its own,
    and reads its throughput from the run's own TensorBoard events. Returns (examples/s, peak bytes)."""
    from trainers.event_reader import read_scalars

    with tempfile.TemporaryDirectory(prefix="bench-run-") as model_dir:
        command = [sys.executable, "-m", "trainers.train", f"--model_dir={model_dir}", *_trainer_flags(spec)]
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError((result.stderr.strip().splitlines() or ["no output"])[-1])
        windows = read_scalars(os.path.join(model_dir, "tensorboard", "train"))["examples_per_second"]
    # Windows that start after the warm-up (a window ending at step s covers the steps after s - window).
    timed = [value for step, value in windows if step - _window(spec) >= spec["warmup"]] or [v for _, v in windows]
    return statistics.median(timed), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def _cached_batches(corpus):
    """The TFRS tutorials' input: the split in memory, shuffled, batched and cached."""
    import tensorflow as tf

    from data import records

    columns = records.read_all(corpus.train_files)
    features = {"user_id": columns["user_id"], "item_id": columns["item_id"]}
    dataset = tf.data.Dataset.from_tensor_slices(features).shuffle(100_000, seed=42)
    return dataset.batch(FLAGS.batch_size, drop_remainder=True).cache().repeat()


def _timed_loop(step, batches, warmup, steps):
    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator))
    started = time.perf_counter()
    for _ in range(steps):
        loss = step(next(iterator))
    float(loss)  # wait for the last step
    return steps * FLAGS.batch_size / (time.perf_counter() - started)


def _measure_tf_nn(spec):
    """The hand-written loop: tf.nn.sampled_softmax_loss and Keras Adagrad over cached batches."""
    import tensorflow as tf

    corpus = _corpus(spec["num_items"], spec["num_users"])
    tf.keras.utils.set_random_seed(42)
    initializer = tf.keras.initializers.RandomUniform(-0.05, 0.05)
    item_table = tf.Variable(initializer([corpus.num_items, FLAGS.embedding_dim]), name="items")
    user_table = tf.Variable(initializer([corpus.num_users, FLAGS.embedding_dim]), name="users")
    biases = tf.zeros([corpus.num_items])
    optimizer = tf.keras.optimizers.Adagrad(0.1)
    variables = [item_table, user_table]

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            queries = tf.nn.embedding_lookup(user_table, batch["user_id"])
            labels = batch["item_id"][:, tf.newaxis]
            loss = tf.reduce_mean(tf.nn.sampled_softmax_loss(
                item_table, biases, labels, queries, FLAGS.num_sampled, corpus.num_items, seed=42
            ))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return _timed_loop(step, _cached_batches(corpus), spec["warmup"], spec["steps"])


def _measure_tfrs(spec):
    """TFRS's in-batch Retrieval task under Keras fit, as its tutorials build it (no top-K metrics in training)."""
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    corpus = _corpus(spec["num_items"], spec["num_users"])
    tf.keras.utils.set_random_seed(42)

    class TutorialModel(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.user_model = tf.keras.layers.Embedding(corpus.num_users, FLAGS.embedding_dim)
            self.item_model = tf.keras.layers.Embedding(corpus.num_items, FLAGS.embedding_dim)
            self.task = tfrs.tasks.Retrieval()

        def compute_loss(self, features, training=False):
            return self.task(self.user_model(features["user_id"]), self.item_model(features["item_id"]))

    model = TutorialModel()
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    timer = _WindowTimer(spec["warmup"])
    model.fit(_cached_batches(corpus), epochs=1, steps_per_epoch=spec["warmup"] + spec["steps"], verbose=0,
              callbacks=[timer])
    return spec["steps"] * FLAGS.batch_size / timer.seconds


class _WindowTimer:
    """Keras callback: wall time from the end of the warm-up steps to the end of training."""

    def __new__(cls, warmup_steps):
        import tensorflow as tf

        class WindowTimer(tf.keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch >= warmup_steps - 1 and not hasattr(self, "started"):
                    self.started = time.perf_counter()

            def on_train_end(self, logs=None):
                self.seconds = time.perf_counter() - self.started

        return WindowTimer()


def _measure_matmul_limit(spec):
    """Examples/s if a step did nothing but its three [B, D] x [D, C]-sized products, C = num_sampled + 1."""
    import tensorflow as tf

    batch, dim, candidates = FLAGS.batch_size, FLAGS.embedding_dim, FLAGS.num_sampled + 1
    queries = tf.random.normal([batch, dim])
    items = tf.random.normal([candidates, dim])
    upstream = tf.random.normal([batch, candidates])

    @tf.function
    def products(queries, items, upstream):
        logits = tf.matmul(queries, items, transpose_b=True)  # forward [B, C]
        query_gradient = tf.matmul(upstream, items)  # [B, D]
        item_gradient = tf.matmul(upstream, queries, transpose_a=True)  # [C, D]
        return logits[0, 0] + query_gradient[0, 0] + item_gradient[0, 0]

    step = lambda _: products(queries, items, upstream)  # noqa: E731
    return _timed_loop(step, iter(int, 1), spec["warmup"], 20 * spec["steps"])


MEASURES = {"trainer": _measure_trainer, "tf_nn": _measure_tf_nn, "tfrs": _measure_tfrs, "matmul": _measure_matmul_limit}


def run_child(spec):
    measured = MEASURES[spec["kind"]](spec)
    if isinstance(measured, tuple):  # a row that ran its own process
        examples_per_second, peak_bytes = measured
    else:
        examples_per_second, peak_bytes = measured, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"examples_per_second": examples_per_second, "peak_bytes": peak_bytes}


def measure(spec):
    command = [sys.executable, os.path.abspath(__file__), f"--cache_dir={FLAGS.cache_dir}",
               f"--batch_size={FLAGS.batch_size}", f"--num_sampled={FLAGS.num_sampled}",
               f"--embedding_dim={FLAGS.embedding_dim}", f"--num_users={FLAGS.num_users}",
               f"--num_interactions={FLAGS.num_interactions}", f"--child={json.dumps(spec)}"]
    return profile_step.run_json_child(command)


def rows_of(num_items):
    """(row name, spec) of every row at one corpus size."""
    rows = []
    for variant in FLAGS.trainer_variants:
        if "full_softmax" in variant and num_items > FLAGS.full_softmax_max_items:
            continue
        steps = FLAGS.dense_steps if "full_softmax" in variant else FLAGS.steps
        warmup = 2 if "full_softmax" in variant else FLAGS.warmup_steps
        name = f"trainer: {variant or 'defaults (sampled_softmax, lazy_adam)'}"
        rows.append((name, {"kind": "trainer", "variant": variant, "steps": steps, "warmup": warmup,
                            "num_users": _num_users(variant)}))
    for name, kind in (("tf.nn + Adagrad, cached", "tf_nn"), ("TFRS in-batch Retrieval", "tfrs"),
                       ("matmul limit", "matmul")):
        rows.append((name, {"kind": kind, "steps": FLAGS.steps, "warmup": FLAGS.warmup_steps,
                            "num_users": FLAGS.num_users}))
    for _, spec in rows:
        spec["num_items"] = num_items
    return rows


def summarise(results):
    """{examples_per_second: median, low, high, peak_bytes: max} of a row's repeats (or its first error)."""
    good = [result for result in results if "error" not in result]
    if not good:
        return results[0]
    speeds = sorted(result["examples_per_second"] for result in good)
    in_order = [result.get("examples_per_second") for result in results]  # repeat i of every row ran together
    return {"examples_per_second": statistics.median(speeds), "low": speeds[0], "high": speeds[-1], "all": in_order,
            "peak_bytes": max(result["peak_bytes"] for result in good), "repeats": len(good)}


def history_density_lines(sizes, histories, bench_report):
    """Markdown: each history row's corpus and mean history, its throughput against the user-id model, the
    hand-written loop and TFRS in-batch fit (ratios of interleaved repeats)."""
    lines = []
    for num_items, rows in histories.items():
        measured = sizes.get(num_items, {})
        user_id = measured.get(bench_report.USER_ID_DEFAULTS, {})
        for name, density in rows.items():
            row = measured.get(name, {})
            if "error" in row or not row:
                continue
            user_id_label = "of the user-id model" + (
                f" ({user_id['examples_per_second']:,.0f})" if user_id and "error" not in user_id else "")
            ratios = [f"{bench_report.ratio_with_spread(row, measured.get(reference, {})) or 'n/a'} {label}"
                      for reference, label in ((bench_report.USER_ID_DEFAULTS, user_id_label),
                                               (bench_report.PEER, "of tf.nn + Adagrad"),
                                               (bench_report.TFRS, "of TFRS in-batch fit"))]
            lines.append(f"- {num_items:,} items, `{name[len('trainer: '):]}`: {density['num_users']:,} users, "
                         f"histories of {density['mean_history']:.1f} items on average: "
                         f"{row['examples_per_second']:,.0f} examples/s, " + ", ".join(ratios))
    return "\n".join(["", "## The history model at its history density", ""] + lines + [""]) if lines else ""


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(run_child(json.loads(FLAGS.child))), flush=True)
        return
    import bench_report  # scripts/, beside this file

    sizes, histories = {}, {}
    for num_items in [int(size) for size in FLAGS.sizes]:
        rows = rows_of(num_items)
        for num_users in sorted({spec["num_users"] for _, spec in rows}):
            _corpus(num_items, num_users)  # generated once, outside any timing
        for name, spec in rows:
            if "--query_features=history" in spec.get("variant", ""):
                histories.setdefault(num_items, {})[name] = {
                    "num_users": spec["num_users"],
                    "mean_history": mean_history(num_items, spec["num_users"], _history_length(spec["variant"]))}
        results = {name: [] for name, _ in rows}
        for _ in range(FLAGS.repeats):
            for name, spec in rows:
                result = measure(spec)
                print(f"{num_items:,} {name}: {result}", flush=True)
                results[name].append(result)
        sizes[num_items] = {name: summarise(values) for name, values in results.items()}
    breakdown = None
    if FLAGS.breakdown:
        breakdown = {num_items: profile_step.measure(num_items, FLAGS) for num_items in sizes if num_items <= 1_000_000}
    command = "python scripts/bench.py " + " ".join(sys.argv[1:])
    text = bench_report.markdown(sizes, breakdown, command, FLAGS).rstrip("\n") + "\n" + history_density_lines(
        sizes, histories, bench_report)
    print(text)
    if FLAGS.output:
        os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
        with open(FLAGS.output, "w") as file:
            file.write(text)
        with open(os.path.splitext(FLAGS.output)[0] + ".json", "w") as file:
            json.dump({"command": command, "sizes": sizes, "breakdown": breakdown, "histories": histories}, file,
                      indent=2)


if __name__ == "__main__":
    app.run(main)
