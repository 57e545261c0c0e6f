"""Cross-batch memory: FIFO contents against a NumPy FIFO, eviction, masks, no gradient, checkpoints, mirrored."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from retrieval import losses
from retrieval.cross_batch import CrossBatchMemory, masked_positions
from tests.retrieval.test_frequency import mirrored_results


def batch(index, size, dim=2):
    """A recognisable batch: ids 10 * index + row, embeddings (index, row), Q = index + row / 10."""
    rows = np.arange(size)
    embeddings = np.stack([np.full(size, index), rows], axis=1).astype(np.float32)[:, :dim]
    return embeddings, 10 * index + rows, (index + rows / 10).astype(np.float32)


def numpy_fifo_read(batches, num_batches, batch_size, dim):
    """The last num_batches batches, oldest first, each padded to batch_size (id -1, embedding 0, Q 1)."""
    fifo = collections.deque([None] * num_batches, maxlen=num_batches)
    for written in batches:
        fifo.append(written)
    embeddings, ids, counts, valid = [], [], [], []
    for written in fifo:
        size = 0 if written is None else len(written[1])
        padding = batch_size - size
        embeddings.append(np.zeros([padding, dim]) if written is None else np.pad(written[0], [[0, padding], [0, 0]]))
        ids.append(np.full(padding, -1) if written is None else np.pad(written[1], [0, padding], constant_values=-1))
        counts.append(np.ones(padding) if written is None else np.pad(written[2], [0, padding], constant_values=1))
        valid.append(np.arange(batch_size) < size)
    return [np.concatenate(values) for values in (embeddings, ids, counts, valid)]


def assert_read_equals(memory, expected):
    contents = memory.read()
    for name, ours, reference in zip(contents._fields, contents, expected):
        np.testing.assert_array_equal(ours.numpy(), reference, err_msg=name)


def test_empty_memory_is_all_invalid():
    memory = CrossBatchMemory(num_batches=2, batch_size=3, dim=4)
    contents = memory.read()
    assert memory.memory_size == 6
    assert contents.embeddings.shape == (6, 4) and contents.embeddings.dtype == tf.float32
    assert not contents.valid.numpy().any()
    np.testing.assert_array_equal(contents.ids.numpy(), [-1] * 6)
    np.testing.assert_array_equal(contents.expected_count.numpy(), [1.0] * 6)


def test_eviction_order_hand_worked():
    memory = CrossBatchMemory(num_batches=2, batch_size=3, dim=2)
    memory.write(*batch(1, 3))
    np.testing.assert_array_equal(memory.read().ids.numpy(), [-1, -1, -1, 10, 11, 12])  # oldest slot first: empty
    memory.write(*batch(2, 2))  # a short batch leaves its third row empty
    np.testing.assert_array_equal(memory.read().ids.numpy(), [10, 11, 12, 20, 21, -1])
    np.testing.assert_array_equal(memory.read().valid.numpy(), [True, True, True, True, True, False])
    memory.write(*batch(3, 3))  # evicts batch 1, the oldest
    contents = memory.read()
    np.testing.assert_array_equal(contents.ids.numpy(), [20, 21, -1, 30, 31, 32])
    np.testing.assert_array_equal(contents.embeddings.numpy()[:, 0], [2, 2, 0, 3, 3, 3])
    np.testing.assert_allclose(contents.expected_count.numpy(), [2.0, 2.1, 1.0, 3.0, 3.1, 3.2], rtol=1e-6)
    memory.write(*batch(4, 1))  # evicts batch 2
    np.testing.assert_array_equal(memory.read().ids.numpy(), [30, 31, 32, 40, -1, -1])


def test_contents_after_many_writes_equal_a_numpy_fifo():
    num_batches, batch_size, dim = 3, 5, 2
    memory = CrossBatchMemory(num_batches, batch_size, dim)
    write = tf.function(memory.write)
    written = []
    for index, size in enumerate([5, 4, 5, 1, 5, 3, 5, 5]):  # full and short batches, 8 writes over 3 slots
        written.append(batch(index, size))
        write(*written[-1])
        assert_read_equals(memory, numpy_fifo_read(written, num_batches, batch_size, dim))


def test_mixed_precision_embeddings_are_stored_as_float32():
    memory = CrossBatchMemory(num_batches=1, batch_size=2, dim=2)
    memory.write(tf.constant([[0.5, 1.0], [2.0, 3.0]], tf.float16), [4, 5], [1.0, 2.0])
    assert memory.read().embeddings.dtype == tf.float32
    np.testing.assert_array_equal(memory.read().embeddings.numpy(), [[0.5, 1.0], [2.0, 3.0]])


def test_bad_writes_are_refused():
    memory = CrossBatchMemory(num_batches=2, batch_size=2, dim=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="pass the global batch size"):
        memory.write(*batch(1, 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected_count and ids"):
        memory.write(np.zeros([2, 2], np.float32), [1, 2], [1.0])
    with pytest.raises(ValueError):
        memory.write(np.zeros([2, 3], np.float32), [1, 2], [1.0, 1.0])  # dim 3 into a memory of dim 2
    with pytest.raises(ValueError, match="num_batches"):
        CrossBatchMemory(num_batches=0, batch_size=2, dim=2)


def test_masked_positions_hand_worked():
    memory_ids = tf.constant([7, 3, -1, 5, 7, 9], tf.int64)
    valid = tf.constant([True, True, False, True, True, False])
    true_ids = tf.constant([[7, 5], [4, 4], [9, 3]], tf.int64)  # row 2's 9 only sits in an empty slot
    positions = masked_positions(true_ids, memory_ids, valid).numpy()
    hits = {(0, 0), (0, 3), (0, 4), (2, 1)}
    empty = {(row, column) for row in range(3) for column in (2, 5)}
    assert sorted(map(tuple, positions.tolist())) == sorted(hits | empty)  # each once
    assert set(map(tuple, positions[: len(hits)].tolist())) == hits, "hits first, then the empty columns"
    assert positions.dtype == np.int64


def test_masked_positions_equal_a_numpy_reference():
    rng = np.random.default_rng(4)
    memory_ids = rng.integers(0, 12, size=40)
    valid = rng.random(40) < 0.7
    true_ids = rng.integers(0, 12, size=(16, 3))
    positions = masked_positions(true_ids, memory_ids, valid).numpy()
    expected = {
        (row, column)
        for row in range(16)
        for column in range(40)
        if not valid[column] or memory_ids[column] in true_ids[row]
    }
    assert len(positions) == len(expected)
    assert set(map(tuple, positions.tolist())) == expected


def test_masked_positions_feed_candidate_logits_and_give_a_finite_loss():
    """[true | in-batch | memory] columns, masked as losses.candidate_logits masks its own: valid() and loss."""
    memory = CrossBatchMemory(num_batches=2, batch_size=3, dim=2)
    memory.write(np.ones([2, 2], np.float32), [1, 2], [1.0, 1.0])  # one slot half full, one empty
    contents = memory.read()
    true_ids = tf.constant([[1], [5]], tf.int64)
    query = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    memory_logits = tf.matmul(query, contents.embeddings, transpose_b=True) - tf.math.log(contents.expected_count)
    positions = masked_positions(true_ids, contents.ids, contents.valid) + tf.constant([[0, 1]], tf.int64)
    logits = tf.concat([tf.constant([[2.0], [3.0]]), memory_logits], axis=1)  # [batch, 1 + memory_size]
    logits = tf.tensor_scatter_nd_update(logits, positions, tf.fill(tf.shape(positions)[:1], losses.MASKED_LOGIT))
    candidates = losses.CandidateLogits(logits, num_true=1, masked_positions=positions)
    # Memory columns, oldest first: 3 empty rows, then ids 1, 2 and one empty row. Row 0's true id 1 is a hit.
    np.testing.assert_array_equal(
        candidates.valid().numpy(),
        [[True, False, False, False, False, True, False], [True, False, False, False, True, True, False]],
    )
    loss = losses.softmax_cross_entropy(candidates).numpy()
    np.testing.assert_allclose(loss, [np.log1p(np.exp(1.0 - 2.0)), np.log(1 + 2 * np.exp(1.0 - 3.0))], rtol=1e-6)


def test_no_gradient_flows_into_the_memory_or_the_written_embeddings():
    memory = CrossBatchMemory(num_batches=2, batch_size=2, dim=2)
    item_embeddings = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
    query = tf.Variable([[1.0, -1.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([memory.embeddings, memory.expected_count])  # even when watched explicitly
        memory.write(item_embeddings * 2.0, [1, 2], [1.0, 1.0])
        contents = memory.read()
        loss = tf.reduce_sum(tf.matmul(query, contents.embeddings, transpose_b=True) - contents.expected_count)
    assert tape.gradient(loss, memory.embeddings) is None
    assert tape.gradient(loss, item_embeddings) is None
    np.testing.assert_array_equal(tape.gradient(loss, query).numpy(), [[8.0, 12.0]])  # the memory rows' sum
    assert not memory.trainable_variables


def test_checkpoint_restore_continues_exactly(tmp_path):
    batches = [batch(index, 3) for index in range(5)]
    uninterrupted = CrossBatchMemory(num_batches=3, batch_size=3, dim=2)
    for written in batches:
        uninterrupted.write(*written)
    first = CrossBatchMemory(num_batches=3, batch_size=3, dim=2)
    for written in batches[:4]:
        first.write(*written)
    path = tf.train.Checkpoint(memory=first).save(str(tmp_path / "ckpt"))
    restored = CrossBatchMemory(num_batches=3, batch_size=3, dim=2)
    tf.train.Checkpoint(memory=restored).restore(path).assert_consumed()
    restored.write(*batches[4])
    assert_read_equals(restored, [value.numpy() for value in uninterrupted.read()])


@pytest.mark.slow
def test_mirrored_two_logical_cpus_equal_one_device():
    """The subprocess of test_frequency (shared): each replica writes its half of the global batch."""
    memory = mirrored_results()["cross_batch"]
    assert memory["num_copies"] == 2, memory
    for name in ("embeddings", "ids", "expected_count", "filled", "next_slot"):
        assert memory[name + "_copies_equal_single_device"] == [True, True], (name, memory)
    assert memory["reads_in_replicas_equal_single_device"], memory
    assert memory["valid_rows"] == memory["expected_valid_rows"], memory
