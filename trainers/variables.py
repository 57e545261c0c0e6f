"""Reading a model's variables in place, a row range at a time: an item table of 10M x 64 (2.56 GB, as much again
for each Adam slot) is never copied whole to be summed or checked (the trainer's weights fingerprint,
trainers.fit_loop; the check of CheckpointCallback that no non-finite weight is saved, trainers.callbacks)."""

import tensorflow as tf

# Rows of a variable read at a time by row_chunks (64 MB of a 64-wide float32 table).
CHUNK_ROWS = 1 << 18


def row_chunks(variable, rows: int = CHUNK_ROWS):
    """The values of a variable as tensors of at most `rows` rows each, in row order (a ShardedVariable's shards
    one after another).

    Why not one read: once a sparse op (the embedding lookup's gather, LazyAdam's scatters) has touched a resource
    variable, TensorFlow keeps it in copy-on-read mode, so a dense read (tf.convert_to_tensor, tf.math.is_finite of
    the variable) copies the whole buffer: 2.56 GB for a 10M x 64 item table or either of its Adam slots. And the
    oneDNN CPU allocator (a BFC allocator) keeps what it once held, so one such copy raises the process's peak
    resident memory for good. A tf.gather of a row range reads the rows in place (ResourceGather)."""
    for part in getattr(variable, "variables", [variable]):  # a ShardedVariable's shards, else the variable
        num_rows = int(part.shape[0]) if part.shape.rank else 0
        if num_rows <= rows:
            yield tf.convert_to_tensor(part)  # small (or a scalar): one read
            continue
        for start in range(0, num_rows, rows):
            yield tf.gather(part, tf.range(start, min(start + rows, num_rows), dtype=tf.int64))


def non_finite_variables(variables) -> list:
    """Names of the float variables holding NaN or Inf, checked CHUNK_ROWS rows at a time (row_chunks: never a
    copy of a whole table)."""
    names = []
    for variable in variables:
        if variable.dtype.is_floating and not all(
            bool(tf.reduce_all(tf.math.is_finite(chunk))) for chunk in row_chunks(variable)
        ):
            names.append(variable.name)
    return names
