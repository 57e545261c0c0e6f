"""Training input: every row once per epoch, exact resume from a step, shards that add up to the global batch."""

import numpy as np
import pytest

from data import pipeline, records

NUM_ROWS, BATCH = 1000, 64


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    columns = {
        "user_id": np.arange(NUM_ROWS, dtype=np.int64),  # row number, so batches say which rows they hold
        "item_id": rng.integers(0, 50, NUM_ROWS).astype(np.int64),
        "timestamp": np.arange(NUM_ROWS, dtype=np.int64),
    }
    return records.write_interactions(str(directory), "train", columns, num_shards=4)


def _rows(dataset, steps):
    return [batch["user_id"].numpy() for batch in dataset.take(steps)]


@pytest.mark.parametrize("max_in_memory_bytes", [pipeline.MAX_IN_MEMORY_BYTES, 0], ids=["in_memory", "streaming"])
def test_resume_at_a_step_gives_the_same_batches(files, max_in_memory_bytes):
    steps_per_epoch = NUM_ROWS // BATCH  # 15: step 20 is inside the second epoch
    kwargs = dict(seed=3, repeat=True, max_in_memory_bytes=max_in_memory_bytes, shuffle_buffer=300)
    whole = _rows(pipeline.training_dataset(files, BATCH, **kwargs), 2 * steps_per_epoch)
    resumed = _rows(pipeline.training_dataset(files, BATCH, start_step=20, **kwargs), 2 * steps_per_epoch - 20)
    assert len(resumed) == len(whole[20:]) == 2 * steps_per_epoch - 20  # every batch after step 20 compared
    for expected, got in zip(whole[20:], resumed):
        np.testing.assert_array_equal(expected, got)
    other_seed = _rows(pipeline.training_dataset(files, BATCH, **{**kwargs, "seed": 4}), 1)
    assert not np.array_equal(whole[0], other_seed[0])


def test_in_memory_epoch_is_a_permutation_and_epochs_differ(files):
    steps_per_epoch = NUM_ROWS // BATCH
    batches = _rows(pipeline.training_dataset(files, BATCH, seed=1, repeat=True), 2 * steps_per_epoch)
    first, second = np.concatenate(batches[:steps_per_epoch]), np.concatenate(batches[steps_per_epoch:])
    assert len(np.unique(first)) == len(first) == steps_per_epoch * BATCH  # no row twice within an epoch
    assert not np.array_equal(first, second)
    assert abs(np.mean(first) - NUM_ROWS / 2) < 60  # drawn from the whole split, not its start
    one_pass = _rows(pipeline.training_dataset(files, BATCH, seed=1, repeat=False), 100)
    assert len(one_pass) == steps_per_epoch


def test_shards_add_up_to_the_global_batch(files):
    global_batches = _rows(pipeline.training_dataset(files, BATCH, seed=5, repeat=True), 3)
    shards = [_rows(pipeline.training_dataset(files, BATCH, seed=5, repeat=True, num_shards=2, shard_index=index), 3)
              for index in range(2)]
    for step in range(3):
        assert len(shards[0][step]) == BATCH // 2
        np.testing.assert_array_equal(np.concatenate([shards[0][step], shards[1][step]]), global_batches[step])
    with pytest.raises(ValueError, match="batch_size=63"):
        pipeline.training_dataset(files, 63, num_shards=2)
