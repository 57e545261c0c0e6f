"""What a client may send as context to a history model's export (issue 25): at the command line a malformed
--context item is a one-line refusal, and inside the SavedModel's serving_history an out-of-range id
(hour_of_day=99) or a number that is not finite (inf, NaN, beyond float32) is none, never an op error or NaN
scores."""

import math

import numpy as np
import pytest

from tests.conftest import run_module
from tests.trainers.test_context_columns import write_log
from tests.trainers.test_export import _retrieve_rows  # a trainers.retrieve run's rows (its --output_json)

PREPARE = ["--user_column=user", "--item_column=item", "--timestamp_column=time", "--context_columns=device",
           "--numeric_context_columns=price"]
# The smallest run that exports a history model reading every kind of context but multi-valued: one epoch.
TRAIN = ["--batch_size=128", "--num_sampled=100", "--epochs=1", "--learning_rate=0.02", "--embedding_dim=16",
         "--log_every_steps=20", "--projector_items=0", "--seed=3", "--export_top_k=20",
         "--query_features=history,context", "--context_features=hour_of_day,day_of_week,device,price"]
HISTORY = "--history=item205,item17,item342"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving_inputs")
    write_log(root / "log.csv")
    prepared = run_module("data.prepare", f"--input={root / 'log.csv'}", f"--output_dir={root / 'corpus'}", *PREPARE)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    trained = run_module("trainers.train", f"--data={root / 'corpus'}", f"--model_dir={root / 'model'}", *TRAIN)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return root / "model" / "export"


def _refusal(export_dir, item):
    result = run_module("trainers.retrieve", f"--export_dir={export_dir}", HISTORY, f"--context={item}", "--k=5")
    assert result.returncode != 0 and "Traceback" not in result.stderr, (item, result.stdout, result.stderr[-2000:])
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_malformed_context_items_are_refused_in_one_line_naming_the_model_columns(export_dir):
    expected = "expected name=value with name one of day_of_week, device, hour_of_day, price"
    for item in ("device", "price", "=tv"):  # no '=' (any column, not only a time feature), an empty name
        assert f"--context {item}: {expected}" in _refusal(export_dir, item)
    assert "--context price=1e39: expected a finite number" in _refusal(export_dir, "price=1e39")


@pytest.mark.slow
def test_an_out_of_range_hour_at_the_command_line_is_none(export_dir):
    export = f"--export_dir={export_dir}"
    none = _retrieve_rows(export, HISTORY, "--context=device=tv,price=3.5", "--k=5")
    for hour in ("99", "-5", "99999999999999999999"):
        rows = _retrieve_rows(export, HISTORY, f"--context=device=tv,price=3.5,hour_of_day={hour}", "--k=5")
        assert rows == none, hour
    assert all(math.isfinite(float(fields[-1])) for fields in none)


@pytest.mark.slow
def test_the_signature_itself_treats_out_of_range_and_non_finite_values_as_none(export_dir):
    """A raw SavedModel client, no trainers.retrieve in between."""
    import tensorflow as tf

    serving = tf.saved_model.load(str(export_dir / "1")).signatures["serving_history"]
    with np.errstate(over="ignore"):
        beyond_float32 = np.float32(1e39)  # what a float32 client's 1e39 becomes: inf
    rows = [  # (hour_of_day, day_of_week, device, price), each bad row beside the same row with that value none
        (99, 3, "tv", 3.5), (-1, 3, "tv", 3.5),
        (5, 7, "tv", 3.5), (5, -1, "tv", 3.5),
        (5, 3, "tv", np.inf), (5, 3, "tv", beyond_float32), (5, 3, "tv", -np.inf), (5, 3, "tv", np.nan),
        (2**62, -2**62, "phone", np.nan), (-1, -1, "", np.nan),
        (5, 3, "tv", 3e38),  # finite in float32 but far out: the scores stay finite
    ]
    hours, days, devices, prices = zip(*rows)
    outputs = serving(history=tf.constant([["item205", "item17", "item342"]] * len(rows)),
                      hour_of_day=tf.constant(hours, tf.int64), day_of_week=tf.constant(days, tf.int64),
                      device=tf.constant(devices), price=tf.constant(np.array(prices, np.float32)))
    scores, ids = outputs["scores"].numpy(), outputs["item_ids"].numpy()
    assert np.isfinite(scores).all(), scores
    for bad, none in ((0, 1), (2, 3), (4, 7), (5, 7), (6, 7), (8, 9)):
        np.testing.assert_array_equal(ids[bad], ids[none], err_msg=str(rows[bad]))
        np.testing.assert_allclose(scores[bad], scores[none], rtol=1e-6, err_msg=str(rows[bad]))


def test_a_row_whose_finite_number_overflows_its_scores_is_answered_with_it_none():
    """The last guard of serving_history (trainers.serving.finite_top_k), on a toy tower whose query overflows
    float32 for a large finite price: that row gets the answer of price none (0), the other rows keep theirs."""
    import tensorflow as tf

    from trainers import serving

    items = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])

    def query_tower(features):
        return tf.stack([features["price"] * 1e30, features["price"] * -1e30 + 1.0], axis=1)  # [batch, 2]

    def search(queries):
        scores, ids = tf.math.top_k(tf.matmul(queries, items, transpose_b=True), k=2)
        return scores, ids

    features = {"price": tf.constant([1e-30, 1e10, 0.0])}
    scores, ids = serving.finite_top_k(query_tower, search, features, ["price"])
    assert np.isfinite(scores.numpy()).all(), scores
    expected_scores, expected_ids = search(query_tower(features))
    np.testing.assert_array_equal(scores.numpy()[[0, 2]], expected_scores.numpy()[[0, 2]])
    np.testing.assert_array_equal(scores.numpy()[1], expected_scores.numpy()[2])
    np.testing.assert_array_equal(ids.numpy()[1], expected_ids.numpy()[2])
