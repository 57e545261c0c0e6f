"""Where the CPU time of one trainer step goes: `python scripts/profile_step.py --num_items=1000000`.

Each part of a sampled-softmax step (batch 1024, 1,000 log-uniform negatives, dim 64, lazy Adam) is timed on its
own as a tf.function over the same shapes, in CPU milliseconds per step with TensorFlow on one thread (CPU time
barely moves with the load of other processes, where wall time on a shared 2-core machine does); the whole
trainer step is Keras fit of the trainer's own model over its in-memory input, and "the rest" is the whole minus
the parts (Keras, the input pipeline, diagnostics). For a timeline of one step, run the trainer with
--profile_steps=START,END and open TensorBoard's Profile tab.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def _cpu_ms(function, arguments=(), calls=100, rounds=3):
    """Median over rounds of the CPU milliseconds per call of a tf.function (after 10 warm-up calls)."""
    for _ in range(10):
        result = function(*arguments)
    times = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            result = function(*arguments)
        _ = [value.numpy() for value in __import__("tensorflow").nest.flatten(result) if hasattr(value, "numpy")]
        times.append(1000 * (time.process_time() - started) / calls)
    return sorted(times)[len(times) // 2]


def _parts(num_items, num_users, batch_size, num_sampled, dim):
    """{part: CPU ms} of the step's pieces, each its own tf.function on the same shapes."""
    import tensorflow as tf

    from retrieval import losses, samplers
    from retrieval.optimizers import LazyAdam

    items = tf.Variable(tf.random.uniform([num_items, dim], -0.05, 0.05))
    users = tf.Variable(tf.random.uniform([num_users, dim], -0.05, 0.05))
    user_ids = tf.random.uniform([batch_size], 0, num_users, tf.int64)
    true_ids = tf.random.uniform([batch_size, 1], 0, num_items, tf.int64)
    candidates = samplers.log_uniform(true_ids, num_sampled, num_items, True, 1)
    item_ids = tf.concat([true_ids[:, 0], candidates.ids], axis=0)
    item_tower = lambda ids: tf.gather(items, ids)  # noqa: E731
    queries = tf.gather(users, user_ids)
    embeddings = tf.gather(items, item_ids)
    fixed_tower = lambda ids: embeddings  # noqa: E731  (the gathers are timed apart)

    def forward():
        return tf.reduce_mean(losses.sampled_softmax(queries, true_ids, fixed_tower, candidates))

    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch([queries, embeddings])
            loss = tf.reduce_mean(losses.sampled_softmax(queries, true_ids, lambda ids: tape_embeddings(ids),
                                                         candidates))
        return tape.gradient(loss, [queries, embeddings])

    tape_embeddings = lambda ids: embeddings  # noqa: E731
    optimizer = LazyAdam(0.005)
    optimizer.build([items, users])
    gradients = [tf.IndexedSlices(tf.random.normal([batch_size + num_sampled, dim]), item_ids, tf.shape(items)),
                 tf.IndexedSlices(tf.random.normal([batch_size, dim]), user_ids, tf.shape(users))]
    parts = {
        "sampler (log-uniform, unique)": _cpu_ms(tf.function(
            lambda: samplers.log_uniform(true_ids, num_sampled, num_items, True, 1).ids)),
        "accidental hits (sort + search)": _cpu_ms(tf.function(
            lambda: losses.accidental_hits(true_ids, candidates.ids))),
        "embedding gathers (items, users)": _cpu_ms(tf.function(
            lambda: (item_tower(item_ids), tf.gather(users, user_ids)))),
        "logits + loss, forward": _cpu_ms(tf.function(forward)),
    }
    parts["logits + loss, backward"] = _cpu_ms(tf.function(forward_backward)) - parts["logits + loss, forward"]
    def update():
        optimizer.apply_gradients(zip(gradients, [items, users]))
        return tf.constant(0)

    parts["optimizer (lazy Adam, touched rows)"] = _cpu_ms(tf.function(update))
    return parts


def _whole_step(num_items, num_users, num_interactions, batch_size, num_sampled, dim, cache_dir=None, steps=120,
                warmup=20):
    """CPU ms per step of Keras fit on the trainer's own model and in-memory input."""
    import tensorflow as tf

    from data import builtin, pipeline, sources, synthetic
    from retrieval.optimizers import LazyAdam
    from trainers import model_builder
    from trainers.run_config import RunConfig

    config = synthetic.SyntheticConfig(
        num_items=num_items, num_users=num_users, num_interactions=num_interactions, seed=42
    )
    corpus = builtin.prepare(config, cache_dir or sources.DEFAULT_CACHE_DIR)
    # The trainer's loss (its temperature) and towers (normalised), with this profile's negatives.
    loss = dataclasses.replace(RunConfig().loss, num_sampled=num_sampled)
    model = model_builder.build_model(corpus, loss, dim, global_batch_size=batch_size)
    model.compile(optimizer=LazyAdam(0.005))
    batches = pipeline.in_memory_batches(pipeline.read_in_memory(corpus.train_files), batch_size, 42)
    clock = {}

    class Clock(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == warmup:
                clock["start"] = time.process_time()

        def on_train_end(self, logs=None):
            clock["cpu"] = time.process_time() - clock["start"]

    model.fit(batches, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[Clock()])
    return 1000 * clock["cpu"] / steps


def run(num_items, num_users=100_000, num_interactions=1_000_000, batch_size=1024, num_sampled=1000, dim=64,
        cache_dir=None):
    """{part: CPU ms per step} at one corpus size, with the whole step and the rest (one thread)."""
    import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    parts = _parts(num_items, num_users, batch_size, num_sampled, dim)
    whole = _whole_step(num_items, num_users, num_interactions, batch_size, num_sampled, dim,
                        cache_dir=cache_dir)
    parts["rest: Keras, input pipeline, diagnostics"] = whole - sum(parts.values())
    parts["whole trainer step"] = whole
    return parts


def measure(num_items, flag_values):
    """run() in a fresh process (thread settings must precede TensorFlow's start); {part: ms} or {"error": ...}."""
    arguments = dict(num_items=num_items, num_users=flag_values.num_users, num_interactions=flag_values.num_interactions,
                     batch_size=flag_values.batch_size, num_sampled=flag_values.num_sampled,
                     dim=flag_values.embedding_dim, cache_dir=flag_values.cache_dir)
    return run_json_child([sys.executable, os.path.abspath(__file__), json.dumps(arguments)])


def run_json_child(command):
    """Runs a measuring child process from the repository root; its last JSON line, or {"error": its last
    stderr line} (bench.py's rows use it too)."""
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"num_items": 1_000_000}
    print(json.dumps(run(**arguments)), flush=True)
