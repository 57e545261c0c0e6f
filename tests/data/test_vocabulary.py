import numpy as np
import pytest

from data import vocabulary


def test_ids_by_descending_count_ties_by_key_whatever_the_input_order():
    keys, counts = ["b", "a", "c", "10", "9"], np.array([2, 2, 5, 1, 1])
    built, id_of = vocabulary.build(keys, counts)
    assert built.keys == ["c", "a", "b", "10", "9"]  # ties: code-point order, so "10" < "9"
    np.testing.assert_array_equal(built.counts, [5, 2, 2, 1, 1])
    np.testing.assert_array_equal(id_of, [2, 1, 0, 3, 4])
    shuffled, _ = vocabulary.build(keys[::-1], counts[::-1])
    assert shuffled.keys == built.keys and built.oov_id is None


def test_rare_keys_share_one_oov_id_ranked_by_their_total_count():
    keys, counts = ["a", "b", "c", "d", "e"], np.array([9, 1, 1, 1, 2])
    built, id_of = vocabulary.build(keys, counts, min_count=2)
    # b, c, d (3 in total) fold into <oov>, which ranks between a (9) and e (2): counts stay non-increasing.
    assert built.keys == ["a", vocabulary.OOV_KEY, "e"]
    np.testing.assert_array_equal(built.counts, [9, 3, 2])
    assert built.oov_id == 1
    np.testing.assert_array_equal(id_of, [0, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="reserved"):
        vocabulary.build(["a", vocabulary.OOV_KEY], np.array([1, 1]), min_count=2)
    assert vocabulary.build(["a", vocabulary.OOV_KEY], np.array([2, 1]))[0].keys == ["a", vocabulary.OOV_KEY]
