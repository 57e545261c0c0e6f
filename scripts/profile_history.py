"""CPU time of the history model's trainer step against the user-id model's, and where it goes.

    .venv/bin/python scripts/profile_history.py [--num_users=20000] [--num_items=1000000] [--ops]
    .venv/bin/python scripts/profile_history.py --models=history,history+trained_positions=5   # a lever, A/B

Builds each model as trainers.train does (model_builder.build_model, lazy Adam, the in-memory input with its
query inputs) and times Keras fit on one thread in CPU milliseconds per step (time.process_time; CPU time barely
moves with the load of other processes, where wall time on a shared 2-core machine does; wall time per step is
printed too, and --threads=0 runs TensorFlow on its default threads as the trainer does). The models run in
turns, in one process, so both see the same machine. --ops adds an op-level profile of each (tf.profiler over a
few steps, the .xplane.pb's op events summed by name on the TensorFlow compute lines), grouped into the parts of
the step (CATEGORIES: input lookups, the history table's update, the other tables' updates, the encoder, the rest:
loss, item tower, head) and the top ops printed. A model name may carry settings after `+`
(`history+trained_positions=5`: HistoryEncoder.trained_positions), so a lever is timed against the default in
the same process, in turns.
"""

import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("num_items", 1_000_000, "Items in the built-in corpus (bench.py's size).")
flags.DEFINE_integer("num_users", 20_000, "Users: the built-in corpus's 20,000 (histories of some 28 items on "
                     "average, bench.py's corpus); 100,000 gives 5.2, 2,000 gives 47.")
flags.DEFINE_integer("num_interactions", 1_000_000, "Interactions.")
flags.DEFINE_integer("history_length", 50, "--history_length of the history model.")
flags.DEFINE_integer("steps", 100, "Timed steps per round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds per model (the median is printed).")
flags.DEFINE_integer("steps_per_execution", 50, "Steps per tf.function call (the trainer's automatic value).")
flags.DEFINE_integer("threads", 1, "TensorFlow's intra- and inter-op threads (0: its default, as the trainer runs).")
flags.DEFINE_boolean("ops", False, "Also print an op-level profile of each model's step.")
flags.DEFINE_string("models", "user_id,history", "Which models to time: user_id or history, each optionally with "
                    "+setting=value pieces (trained_positions=5; momentless=history_encoder/embeddings).")
FLAGS = flags.FLAGS
OP_EVENT = re.compile(r"^[^:]+:[A-Za-z0-9_]+$")
# Each op goes to the first category whose marker its name holds. The optimizer runs each sparse table's
# de-duplication and update under the table's scope (retrieval.optimizers.variable_scope).
CATEGORIES = (("[data]", "input pipeline (history lookups, shuffle, batch)"),
              ("Adam/history_encoder", "history table update (de-duplication, lazy Adam rows)"),
              ("history_encoder", "history encoder (forward and gradient)"),
              ("Adam/", "other updates (item table, head, position weights)"),
              ("", "rest (loss, item tower, head)"))


def categories(totals):
    """{category: ms} of an op profile: each op in the first CATEGORIES entry whose marker its name holds."""
    grouped = collections.Counter()
    for name, ms in totals.items():
        grouped[next(label for marker, label in CATEGORIES if marker in name)] += ms
    return grouped


SETTINGS = ("trained_positions", "momentless")  # what a --models name may set after `+`


def _model_and_batches(tf, corpus, name):
    query_features, *pieces = name.split("+")
    settings = dict(piece.split("=", 1) for piece in pieces)
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"--models: unknown setting(s) {unknown} in {name!r}; expected some of {SETTINGS}")
    # momentless=history_encoder/embeddings: LazyAdam(momentless_variables=...), one slot for that table
    optimizer_options = {"momentless_variables": settings["momentless"].split(";")} if "momentless" in settings else {}
    model, batches = _default_model_and_batches(tf, corpus, query_features, optimizer_options)
    if "trained_positions" in settings:
        model.query_tower.history_encoder.trained_positions = int(settings["trained_positions"])
    return model, batches


def _default_model_and_batches(tf, corpus, query_features, optimizer_options=None):
    from data import history, pipeline
    from retrieval.optimizers import LazyAdam
    from trainers import model_builder
    from trainers.run_config import ModelConfig, RunConfig

    trainer = RunConfig()  # the trainer's defaults: each model is the one `python -m trainers.train` would build
    model_config = ModelConfig(query_features=tuple(query_features.split(",")))
    batch_size = trainer.optimization.batch_size
    model = model_builder.build_model(corpus, trainer.loss, trainer.model.embedding_dim, trainer.model.hidden_dims,
                                      trainer.model.normalize, global_batch_size=batch_size,
                                      query_config=model_config, history_length=FLAGS.history_length)
    model.compile(optimizer=LazyAdam(trainer.optimization.learning_rate, **(optimizer_options or {})),
                  steps_per_execution=FLAGS.steps_per_execution)
    columns = pipeline.read_in_memory(corpus.train_files)
    query_inputs = None
    if "history" in query_features:
        log = history.history_log(columns["user_id"], columns["item_id"], columns["timestamp"])
        query_inputs = pipeline.QueryInputs(log, FLAGS.history_length)
    batches = pipeline.in_memory_batches(columns, batch_size, trainer.seed, query_inputs=query_inputs)
    return model, batches


def _ms_per_step(model, batches, steps):
    """(CPU ms, wall ms) per step of Keras fit over `steps` steps."""
    started, wall = time.process_time(), time.perf_counter()
    model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
    return 1000 * (time.process_time() - started) / steps, 1000 * (time.perf_counter() - wall) / steps


def _op_profile(tf, model, batches, steps=50):
    """{op name: total ms} over `steps` steps from the profiler's trace (TensorFlow compute lines)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    log_dir = tempfile.mkdtemp(prefix="profile_history_")
    tf.profiler.experimental.start(log_dir)
    model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
    tf.profiler.experimental.stop()
    totals = collections.Counter()
    for path in glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as file:
            space.ParseFromString(file.read())
        for plane in space.planes:
            names = {key: metadata.name for key, metadata in plane.event_metadata.items()}
            for line in plane.lines:
                if "tf_Compute" not in line.name and "tf_data" not in line.name.lower():
                    continue
                prefix = "" if "tf_Compute" in line.name else "[data] "
                for event in line.events:
                    name = names.get(event.metadata_id, "?")
                    if not OP_EVENT.match(name):  # ops only (name:Type), not the executor's own events
                        continue
                    name = name.replace("while/body/_1/", "").replace("while/", "")
                    totals[prefix + name] += event.duration_ps / 1e9 / steps
    return totals


def main(argv):
    del argv
    import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    import tensorflow as tf

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    from data import builtin, sources, synthetic
    from trainers.run_config import RunConfig

    config = synthetic.SyntheticConfig(num_items=FLAGS.num_items, num_users=FLAGS.num_users,
                                       num_interactions=FLAGS.num_interactions, seed=RunConfig.seed)
    corpus = builtin.prepare(config, sources.DEFAULT_CACHE_DIR)
    models = {name: _model_and_batches(tf, corpus, name) for name in FLAGS.models.split(",")}
    for name, (model, batches) in models.items():  # trace and warm up
        _ms_per_step(model, batches, 2 * FLAGS.steps_per_execution)
        slots = sum(int(variable.shape.num_elements() or 0) for variable in model.optimizer.variables[1:])
        print(f"{name}: {slots / 1e6:.1f}M optimizer slot values", flush=True)
    times = {name: [] for name in models}
    walls = {name: [] for name in models}
    for _ in range(FLAGS.rounds):
        for name, (model, batches) in models.items():
            cpu, wall = _ms_per_step(model, batches, FLAGS.steps)
            times[name].append(cpu)
            walls[name].append(wall)
    result = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    wall = {name: sorted(values)[len(values) // 2] for name, values in walls.items()}
    print(json.dumps({"cpu_ms_per_step": result, "wall_ms_per_step": wall, "rounds": times, "wall_rounds": walls}),
          flush=True)
    if "history" in result and len(result) > 1:
        for name in result:
            if name != "history":
                ratios = sorted(a / b for a, b in zip(times[name], times["history"]))  # rounds ran in turns
                print(f"{name} / history CPU per step: median of the rounds' ratios "
                      f"{ratios[len(ratios) // 2]:.3f}x ({ratios[0]:.3f}-{ratios[-1]:.3f})")
    if "user_id" in result and "history" in result:
        print(f"history / user_id CPU per step: {result['history'] / result['user_id']:.2f}x "
              f"(throughput ratio {result['user_id'] / result['history']:.2f}); wall: "
              f"{wall['history'] / wall['user_id']:.2f}x (throughput ratio {wall['user_id'] / wall['history']:.2f})")
    if FLAGS.ops:
        for name, (model, batches) in models.items():
            totals = _op_profile(tf, model, batches, FLAGS.steps_per_execution)
            print(f"\n{name}: ms per step of the profiled ops (profiler overhead included):")
            for label, ms in categories(totals).items():
                print(f"  {ms:7.3f}  {label}")
            print("  top ops:")
            for op, ms in totals.most_common(30):
                print(f"  {ms:7.3f}  {op}")


if __name__ == "__main__":
    app.run(main)
