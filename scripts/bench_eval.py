"""Full-corpus top-K speed next to the machine's own matrix-multiply roofline, TFRS BruteForce and ScaNN.

    python scripts/bench_eval.py --output=docs/bench_eval.md

Every figure comes from this one run on the same item embeddings [num_items, dim] (clustered like trained
embeddings: a mixture of Gaussians) and the same queries:
  tf.matmul roofline   matmuls alone, scores discarded: our [batch, dim] x [dim, item_chunk] chunks and one
                       [batch, dim] x [dim, num_items] product; the better GFLOP/s is the roofline, and the
                       queries/s it allows = GFLOP/s / (2 x items x dim)
  exact top-K (ours)   retrieval.metrics.top_k_function: matmul + two-stage top-k per chunk + running merge
  TFRS BruteForce      tfrs.layers.factorized_top_k.BruteForce: [batch, num_items] scores, one tf.math.top_k
  ScaNN                retrieval.index.ScaNNIndex (TFRS ScaNN layer): build seconds, queries/s, recall vs exact
Each timing is the best of --repeats passes (the machine is shared; the best pass is the least disturbed one),
the methods interleaved within each repeat so that they see the same load.

Prints the table (and with --output writes it, with the command, to a markdown file); --output_json=PATH writes
the same figures as JSON:
    {"command", "setup": {"num_items", "dim", "k", "num_queries", "batch_size", "item_chunk_size", "repeats",
     "cpu_count", "processor", "tensorflow"}, "roofline": {"gflops", "queries_per_second"},
     "rows": [{"method": "matmul_chunks" | "matmul_whole" | "ours" | "tfrs" | "scann", "label" (the table's name),
               "queries", "best_pass_seconds", "queries_per_second", "percent_of_roofline", "notes" (the table's
               text), and by method "gflops" (matmul_*), "same_ids_as_ours" (tfrs), "recall_at_10", "recall_at_k",
               "build_seconds", "speedup_over_ours" (scann)}, ...]}
(the tfrs row absent with --tfrs_queries=0, the scann row with --noscann; recall_at_10 is recall@min(10, k)).
"""

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import retrieval  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from absl import app, flags  # noqa: E402

from retrieval import metrics  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_items", 1_000_000, "Items in the corpus.", lower_bound=1)
flags.DEFINE_integer("dim", 64, "Embedding size.", lower_bound=1)
flags.DEFINE_integer("k", 100, "Items returned per query.", lower_bound=1)
flags.DEFINE_integer("num_queries", 1024, "Queries for the roofline, our top-K and ScaNN.", lower_bound=1)
flags.DEFINE_integer("tfrs_queries", 256, "Queries for TFRS BruteForce (slower).", lower_bound=0)
flags.DEFINE_integer("batch_size", 256, "Queries per call.", lower_bound=1)
flags.DEFINE_integer("item_chunk_size", metrics.ITEM_CHUNK, "Items per matmul chunk of our top-K (and of the roofline).",
                     lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed passes per method; the best counts.", lower_bound=1)
flags.DEFINE_bool("scann", True, "Include ScaNN.")
flags.DEFINE_integer("seed", 0, "Seed of the embeddings.")
flags.DEFINE_string("output", "", "Also write the table and the command to this markdown file.")
flags.DEFINE_string("output_json", "", "Also write every figure of the table to this JSON file (module docstring).")


def clustered_embeddings(rng, count, dim, centers):
    """[count, dim] float32 around random cluster centers: trained embeddings cluster by topic."""
    import numpy as np

    picks = rng.integers(0, len(centers), count)
    return (centers[picks] + rng.normal(size=(count, dim))).astype(np.float32)


def best_seconds(run, batches, timings, name):
    """Times one pass of `run` over every batch; keeps the best pass per method in `timings`."""
    start = time.perf_counter()
    for batch in batches:
        outputs = run(batch)
    outputs[0].numpy()  # wait for the last batch
    seconds = time.perf_counter() - start
    timings[name] = min(timings.get(name, seconds), seconds)


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    from retrieval import index as index_lib

    if FLAGS.k > FLAGS.num_items:
        raise app.UsageError(f"--k={FLAGS.k} exceeds --num_items={FLAGS.num_items}")
    rng = np.random.default_rng(FLAGS.seed)
    centers = rng.normal(size=(1000, FLAGS.dim)).astype(np.float32)
    items = tf.constant(clustered_embeddings(rng, FLAGS.num_items, FLAGS.dim, centers))
    queries = clustered_embeddings(rng, FLAGS.num_queries, FLAGS.dim, centers)
    batches = [tf.constant(queries[start : start + FLAGS.batch_size]) for start in range(0, len(queries), FLAGS.batch_size)]
    tfrs_batches = batches[: max(1, -(-FLAGS.tfrs_queries // FLAGS.batch_size))] if FLAGS.tfrs_queries else []
    tfrs_queries = sum(int(batch.shape[0]) for batch in tfrs_batches)
    chunk = FLAGS.item_chunk_size

    def matmul_only(chunk_size):
        """The chunk matmuls alone; one score per chunk is kept so that none is pruned."""

        @tf.function(input_signature=[tf.TensorSpec([None, FLAGS.dim], tf.float32)])
        def run(batch):
            starts = range(0, FLAGS.num_items, chunk_size)
            return (tf.add_n([tf.matmul(batch, items[start : start + chunk_size], transpose_b=True)[:, 0] for start in starts]),)

        return run

    ours = metrics.top_k_function(items, FLAGS.k, chunk)
    brute_force = tfrs.layers.factorized_top_k.BruteForce(k=FLAGS.k)
    brute_force.index(items)
    tfrs_top_k = tf.function(lambda batch: brute_force(batch, k=FLAGS.k))
    # The roofline is the better of two matmul layouts: our chunks, and one matmul over the whole corpus.
    runs = {
        "matmul_chunks": (matmul_only(chunk), batches),
        "matmul_whole": (matmul_only(FLAGS.num_items), batches),
        "ours": (ours, batches),
        "tfrs": (tfrs_top_k, tfrs_batches),
    }
    scann_build_seconds = None
    if FLAGS.scann:
        start = time.perf_counter()
        scann_index = index_lib.ScaNNIndex(items, FLAGS.k)
        scann_build_seconds = time.perf_counter() - start
        runs["scann"] = (scann_index, batches)

    for name, (run, run_batches) in runs.items():  # trace and warm up
        if run_batches:
            run(run_batches[0])[0].numpy()
    timings = {}
    for _ in range(FLAGS.repeats):
        for name, (run, run_batches) in runs.items():
            if run_batches:
                best_seconds(run, run_batches, timings, name)

    exact_ids = np.concatenate([ours(batch)[1].numpy() for batch in batches])
    flops_per_query = 2.0 * FLAGS.num_items * FLAGS.dim
    rows = []  # (method, table label, queries, best pass seconds, notes, {the row's own figures})
    for name, label in (("matmul_chunks", f"tf.matmul alone, chunks of {chunk:,}"), ("matmul_whole", "tf.matmul alone, whole corpus")):
        rate = FLAGS.num_queries * flops_per_query / timings[name] / 1e9
        rows.append((name, label, FLAGS.num_queries, timings[name], f"{rate:.1f} GFLOP/s", {"gflops": rate}))
    gflops = FLAGS.num_queries * flops_per_query / min(timings["matmul_chunks"], timings["matmul_whole"]) / 1e9
    roofline = gflops * 1e9 / flops_per_query
    rows.append(("ours", f"exact top-{FLAGS.k} (ours)", FLAGS.num_queries, timings["ours"], "exact", {}))
    if tfrs_batches:
        tfrs_ids = np.concatenate([tfrs_top_k(batch)[1].numpy() for batch in tfrs_batches])
        agree = index_lib.recall_against_exact(tfrs_ids, exact_ids[:tfrs_queries])
        rows.append(("tfrs", f"TFRS BruteForce top-{FLAGS.k}", tfrs_queries, timings["tfrs"],
                     f"same ids as ours: {agree:.4f}", {"same_ids_as_ours": float(agree)}))
    if FLAGS.scann:
        _, scann_ids = index_lib.search(scann_index, queries, FLAGS.batch_size)
        recall_10 = index_lib.recall_against_exact(scann_ids, exact_ids[:, : min(10, FLAGS.k)])
        recall_k = index_lib.recall_against_exact(scann_ids, exact_ids)
        speedup = (FLAGS.num_queries / timings["scann"]) / (FLAGS.num_queries / timings["ours"])
        note = (f"recall@{min(10, FLAGS.k)} {recall_10:.4f}, recall@{FLAGS.k} {recall_k:.4f} vs exact; "
                f"build {scann_build_seconds:.1f} s; {speedup:.1f}x ours")
        rows.append(("scann", f"ScaNN top-{FLAGS.k}", FLAGS.num_queries, timings["scann"], note,
                     {"recall_at_10": float(recall_10), "recall_at_k": float(recall_k),
                      "build_seconds": scann_build_seconds, "speedup_over_ours": speedup}))

    header = "| method | queries | best pass (s) | queries/s | % of roofline | notes |\n|---|---:|---:|---:|---:|---|"
    lines = [header]
    for _, name, count, seconds, note, _ in rows:
        rate = count / seconds
        lines.append(f"| {name} | {count} | {seconds:.3f} | {rate:,.1f} | {100 * rate / roofline:.0f}% | {note} |")
    table = "\n".join(lines)
    setup = (f"{FLAGS.num_items:,} items x dim {FLAGS.dim}, top-{FLAGS.k}, batches of {FLAGS.batch_size} queries, "
             f"item chunks of {chunk:,}, best of {FLAGS.repeats} passes; {os.cpu_count()} CPU cores "
             f"({platform.processor() or platform.machine()}), TensorFlow {tf.__version__}")
    print(setup)
    print(f"roofline: {gflops:.1f} GFLOP/s / (2 x {FLAGS.num_items:,} x {FLAGS.dim}) = {roofline:,.1f} queries/s")
    print(table, flush=True)
    command = ("python scripts/bench_eval.py " + " ".join(sys.argv[1:])).strip()
    if FLAGS.output:
        with open(FLAGS.output, "w") as file:
            file.write(DOC.format(command=command, setup=setup, table=table, gflops=gflops, roofline=roofline))
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as file:
            json.dump(figures(command, tf.__version__, gflops, roofline, rows), file, indent=2)


def figures(command, tensorflow_version, gflops, roofline, rows):
    """--output_json's document (the module docstring): the table's rows, unrounded, with the setup."""
    setup = {"num_items": FLAGS.num_items, "dim": FLAGS.dim, "k": FLAGS.k, "num_queries": FLAGS.num_queries,
             "batch_size": FLAGS.batch_size, "item_chunk_size": FLAGS.item_chunk_size, "repeats": FLAGS.repeats,
             "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
             "tensorflow": tensorflow_version}
    table_rows = []
    for method, label, count, seconds, note, extra in rows:
        rate = count / seconds
        table_rows.append({"method": method, "label": label, "queries": count, "best_pass_seconds": seconds,
                           "queries_per_second": rate, "percent_of_roofline": 100 * rate / roofline, "notes": note,
                           **extra})
    return {"command": command, "setup": setup, "roofline": {"gflops": gflops, "queries_per_second": roofline},
            "rows": table_rows}


DOC = """# Full-corpus top-K: speed next to the matmul roofline

Made by `{command}` (one run; every row measured side by side on the same data).

{setup}.
Roofline: the machine's own tf.matmul rate on the same data (the better of our chunk shape and one matmul over
the whole corpus), {gflops:.1f} GFLOP/s, allows
{gflops:.1f}e9 / (2 x items x dim) = {roofline:,.1f} queries/s; no exact method can beat scoring every item.

{table}

How ours gets there (`retrieval/metrics.py`): per item chunk, one matmul, then an exact two-stage top-k:
the max of each group of 32 adjacent columns, top-k of those group maxima, and top-k of the k x 32 columns
of the chosen groups (the true top-k always lie in the k groups with the highest maxima, ties included; the
tests check it against NumPy). tf.math.top_k over a million columns costs about as much as the matmul
itself; the group max is one streaming pass. TFRS BruteForce materialises [batch, num_items] scores and runs
one top_k over all of them. Excluded items (`--exclude_seen`) are a scatter of -inf into each chunk's scores.

ScaNN (`retrieval/index.py`, the TFRS ScaNN layer: ~sqrt(n) leaves, 10% searched, asymmetric hashing, exact
reordering of 10 x k candidates) trades the recall shown for speed; its build time is one-off per export.
The machine is shared by other jobs, so each figure is the best of the repeated passes.
"""


if __name__ == "__main__":
    app.run(main)
