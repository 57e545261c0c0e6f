"""Training throughput and peak memory of each loss at 100K, 1M and 10M items, next to a plain tf.nn loop.

    .venv/bin/python scripts/bench.py                 # prints the table, writes docs/benchmarks.md
    .venv/bin/python scripts/bench.py --sizes=100000  # one size only

Every measurement runs in a child process of its own, so its peak resident memory (ru_maxrss) is its own.
"trainer" rows train the trainer's own pieces: the built-in corpus as TFRecord shards through
data.pipeline.training_dataset (read into memory, one seeded permutation per epoch), trainers.model_builder's
TwoTowerModel, the trainer's optimizer (lazy Adam), and Keras fit with the TensorBoard callback writing every 50
steps. "trainer, streaming input" is the same with the pipeline forced to stream (record shuffle buffer and
batched parsing), to show what the in-memory input is worth. "plain" rows are what one writes by hand: the same
tables (item and user embeddings, dim 64) fed by the usual tf.data chain (TFRecordDataset, shuffle(100,000),
repeat, batch, parse_example, prefetch), a tf.function step on tf.nn.sampled_softmax_loss, and either stock
tf.keras Adam or the same lazy Adam. Ratios are taken between rows of the same run; the machine is shared, so
absolute figures move between runs and ratios less so.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import retrieval  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

flags.DEFINE_list("sizes", ["100000", "1000000", "10000000"], "Item counts to measure.")
flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
flags.DEFINE_integer("num_sampled", 1000, "Sampled negatives per step.")
flags.DEFINE_integer("embedding_dim", 64, "Embedding size.")
flags.DEFINE_integer("num_users", 100_000, "Users in the benchmark corpus.")
flags.DEFINE_integer("num_interactions", 1_000_000, "Interactions in the benchmark corpus.")
flags.DEFINE_integer("steps", 60, "Measured steps per sampled configuration (after warm-up).")
flags.DEFINE_integer("warmup_steps", 15, "Steps run before timing (tracing, first allocations).")
flags.DEFINE_integer(
    "dense_steps", 5, "Measured steps for the configurations whose step is O(items): full softmax and stock Adam."
)
flags.DEFINE_integer("full_softmax_max_items", 1_000_000, "Largest corpus where full softmax is measured.")
flags.DEFINE_string("cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "retrieval-trainer"), "Corpus cache.")
flags.DEFINE_string("output", "docs/benchmarks.md", "Markdown report path ('' to skip).")
flags.DEFINE_integer("repeats", 2, "Measurements per configuration, interleaved; the fastest counts (noise).")
flags.DEFINE_integer("steps_per_execution", 1, "Trainer steps per tf.function call (Keras compile).")
flags.DEFINE_string("child", "", "Internal: run one measurement described by this JSON and print its result.")
FLAGS = flags.FLAGS

CONFIGURATIONS = [
    ("trainer", "sampled_softmax"),
    ("trainer", "sampled_softmax, streaming input"),
    ("trainer", "nce"),
    ("trainer", "in_batch"),
    ("trainer", "full_softmax"),
    ("plain", "lazy_adam"),
    ("plain", "adam"),
]


def _corpus(num_items):
    from data import builtin, synthetic

    config = synthetic.SyntheticConfig(
        num_items=num_items, num_users=FLAGS.num_users, num_interactions=FLAGS.num_interactions, seed=42
    )
    return builtin.prepare(config, FLAGS.cache_dir)


def _measure_trainer(corpus, loss, steps):
    import tensorflow as tf

    from data import pipeline
    from retrieval.optimizers import LazyAdam
    from retrieval.retrieval_loss import LossConfig
    from trainers import model_builder

    tf.keras.utils.set_random_seed(42)
    streaming = loss.endswith(", streaming input")
    loss = loss.split(",")[0]
    config = LossConfig(loss=loss, num_sampled=FLAGS.num_sampled, seed=42)
    model = model_builder.build_model(corpus, config, FLAGS.embedding_dim)
    model.compile(optimizer=LazyAdam(0.005), steps_per_execution=FLAGS.steps_per_execution)
    dataset = pipeline.training_dataset(
        corpus.train_files, FLAGS.batch_size, seed=42, repeat=True, max_in_memory_bytes=0 if streaming else 1 << 40
    )
    timer = _StepTimer(FLAGS.warmup_steps)
    with tempfile.TemporaryDirectory(prefix="bench-tb-") as log_dir:
        tensorboard = tf.keras.callbacks.TensorBoard(log_dir, update_freq=50, profile_batch=0)
        # One fit call: a second would build a new iterator and refill the shuffle buffer inside the timing.
        model.fit(
            dataset, epochs=1, steps_per_epoch=FLAGS.warmup_steps + steps, verbose=0, callbacks=[tensorboard, timer]
        )
    return timer.seconds


class _StepTimer:
    """Keras callback: wall time from the end of the warm-up steps to the end of training."""

    def __new__(cls, warmup_steps):
        import tensorflow as tf

        class StepTimer(tf.keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch >= warmup_steps - 1 and not hasattr(self, "started"):
                    self.started = time.perf_counter()

            def on_train_end(self, logs=None):
                self.seconds = time.perf_counter() - self.started

        return StepTimer()


def _measure_plain(corpus, optimizer_name, steps):
    """The hand-written baseline: same tables, the usual tf.data chain, tf.nn.sampled_softmax_loss."""
    import tensorflow as tf

    from data import records
    from retrieval.optimizers import LazyAdam

    tf.keras.utils.set_random_seed(42)
    initializer = tf.keras.initializers.RandomUniform(-0.05, 0.05)
    item_table = tf.Variable(initializer([corpus.num_items, FLAGS.embedding_dim]), name="items")
    user_table = tf.Variable(initializer([corpus.num_users, FLAGS.embedding_dim]), name="users")
    biases = tf.zeros([corpus.num_items])
    optimizer = LazyAdam(0.005) if optimizer_name == "lazy_adam" else tf.keras.optimizers.Adam(0.005)
    variables = [item_table, user_table]

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            queries = tf.nn.embedding_lookup(user_table, batch["user_id"])
            loss = tf.reduce_mean(
                tf.nn.sampled_softmax_loss(
                    item_table,
                    biases,
                    batch["item_id"][:, tf.newaxis],
                    queries,
                    FLAGS.num_sampled,
                    corpus.num_items,
                    seed=42,
                )
            )
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    dataset = (
        tf.data.TFRecordDataset(corpus.train_files)
        .shuffle(100_000, seed=42)
        .repeat()
        .batch(FLAGS.batch_size, drop_remainder=True)
        .map(records.parse_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    iterator = iter(dataset)
    for _ in range(FLAGS.warmup_steps):
        step(next(iterator))
    started = time.perf_counter()
    for _ in range(steps):
        loss = step(next(iterator))
    float(loss)  # wait for the last step
    return time.perf_counter() - started


def run_child(spec):
    corpus = _corpus(spec["num_items"])
    steps = spec["steps"]
    if spec["kind"] == "trainer":
        seconds = _measure_trainer(corpus, spec["variant"], steps)
    else:
        seconds = _measure_plain(corpus, spec["variant"], steps)
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"examples_per_second": steps * FLAGS.batch_size / seconds, "peak_bytes": peak_bytes}


def _child_command(spec):
    passthrough = [
        f"--batch_size={FLAGS.batch_size}",
        f"--num_sampled={FLAGS.num_sampled}",
        f"--embedding_dim={FLAGS.embedding_dim}",
        f"--num_users={FLAGS.num_users}",
        f"--num_interactions={FLAGS.num_interactions}",
        f"--warmup_steps={FLAGS.warmup_steps}",
        f"--steps_per_execution={FLAGS.steps_per_execution}",
        f"--cache_dir={FLAGS.cache_dir}",
    ]
    return [sys.executable, os.path.abspath(__file__), *passthrough, f"--child={json.dumps(spec)}"]


def measure(spec):
    result = subprocess.run(
        _child_command(spec), cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def table_bytes(num_items):
    """Item table plus its two Adam slots, float32."""
    return 3 * num_items * FLAGS.embedding_dim * 4


def report(rows, command):
    header = (
        "| items | configuration | examples/s | vs plain tf.nn + lazy Adam | vs plain tf.nn + stock Adam | "
        "peak memory | peak / (item table + slots) |"
    )
    lines = [header, "|---:|---|---:|---:|---:|---:|---:|"]
    for num_items, results in rows:
        plain_lazy = results.get(("plain", "lazy_adam"), {}).get("examples_per_second")
        plain_adam = results.get(("plain", "adam"), {}).get("examples_per_second")
        for (kind, variant), result in results.items():
            name = f"{kind}: {variant}" if kind == "trainer" else f"plain tf.nn.sampled_softmax_loss + {variant}"
            if "error" in result:
                lines.append(f"| {num_items:,} | {name} | failed: {result['error']} | | | | |")
                continue
            if result.get("skipped"):
                lines.append(f"| {num_items:,} | {name} | not run: {result['skipped']} | | | | |")
                continue
            speed = result["examples_per_second"]
            versus_lazy = f"{speed / plain_lazy:.2f}x" if plain_lazy else ""
            versus_adam = f"{speed / plain_adam:.2f}x" if plain_adam else ""
            peak = result["peak_bytes"]
            lines.append(
                f"| {num_items:,} | {name} | {speed:,.0f} | {versus_lazy} | {versus_adam} | "
                f"{peak / 2**30:.2f} GiB | {peak / table_bytes(num_items):.2f} |"
            )
    sampled_vs_full = []
    for num_items, results in rows:
        speed = {key: result.get("examples_per_second") for key, result in results.items()}
        sampled, full = speed.get(("trainer", "sampled_softmax")), speed.get(("trainer", "full_softmax"))
        streaming = speed.get(("trainer", "sampled_softmax, streaming input"))
        plain = speed.get(("plain", "lazy_adam"))
        if sampled and full:
            sampled_vs_full.append(f"{num_items:,} items: sampled softmax is {sampled / full:,.0f}x full softmax")
        if sampled and streaming and plain:
            sampled_vs_full.append(
                f"{num_items:,} items: trainer sampled softmax is {sampled / plain:.2f}x the plain tf.nn loop "
                f"({streaming / plain:.2f}x with streaming input)"
            )
    return "\n".join(
        [
            "# Training throughput and memory",
            "",
            f"Command: `{command}`",
            "",
            f"dim {FLAGS.embedding_dim}, batch {FLAGS.batch_size}, num_sampled {FLAGS.num_sampled}, "
            f"{FLAGS.num_users:,} users; 2 CPU cores, shared machine; best of {FLAGS.repeats} interleaved runs per "
            f"row; trainer steps_per_execution={FLAGS.steps_per_execution}. See the docstring of scripts/bench.py for "
            "what each row runs.",
            "",
            *lines,
            "",
            *[f"- {line}" for line in sampled_vs_full],
            "",
        ]
    )


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(run_child(json.loads(FLAGS.child))), flush=True)
        return
    rows = []
    for num_items in [int(size) for size in FLAGS.sizes]:
        _corpus(num_items)  # generate once, outside any timing
        results = {}
        # Interleaved repeats: a burst of load from other processes then hurts every configuration alike.
        for _ in range(FLAGS.repeats):
            for kind, variant in CONFIGURATIONS:
                if variant == "full_softmax" and num_items > FLAGS.full_softmax_max_items:
                    results[(kind, variant)] = {"skipped": f"over --full_softmax_max_items={FLAGS.full_softmax_max_items:,}"}
                    continue
                steps = FLAGS.dense_steps if variant in ("full_softmax", "adam") else FLAGS.steps
                spec = {"kind": kind, "variant": variant, "num_items": num_items, "steps": steps}
                result = measure(spec)
                print(num_items, kind, variant, result, flush=True)
                best = results.get((kind, variant))
                if best is None or "error" in best or result.get("examples_per_second", 0) > best["examples_per_second"]:
                    results[(kind, variant)] = result
        rows.append((num_items, results))
    text = report(rows, "python scripts/bench.py " + " ".join(sys.argv[1:]))
    print(text)
    if FLAGS.output:
        os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
        with open(FLAGS.output, "w") as file:
            file.write(text)


if __name__ == "__main__":
    app.run(main)
