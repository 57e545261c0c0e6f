"""MovieLens 100K through data.prepare: a small fake in the RecBole atomic format, and the real wheel (slow)."""

import json
import os

import numpy as np
import pytest

from data import movielens, records

INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
1\t20\t4\t880000000
2\t30\t4\t891000000
3\t20\t2\t878000000
1\t10\t5\t881250949
1\t20\t3\t881250950
1\t30\t4\t881250951
2\t10\t3\t891717742
2\t20\t1\t891717743
2\t40\t2\t891717744
3\t10\t4\t878887116
3\t30\t4\t878887117
3\t20\t4\t878887118
"""
ITEM = """item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq
10\t"Pinocchio"\t1940\tAnimation Children's
20\tGoldenEye\t1995\tAction Adventure Thriller
30\tFour Rooms\t1995\tThriller
40\tunknown\t\t
"""


def test_fake_movielens_files_are_prepared_with_genres_and_year(tmp_path):
    raw = tmp_path / "ml-100k"
    raw.mkdir()
    (raw / "ml-100k.inter").write_text(INTER)
    (raw / "ml-100k.item").write_text(ITEM)
    prepared = movielens.prepared(str(tmp_path / "cache"), raw_dir=str(raw))
    # Each user's last rating is held out (test): 30, 40, 20; the one before it is the validation split: 20, 20,
    # 30. Item 40 is never rated in train, so it is the OOV bucket (count 0, last) and its eval rating is dropped.
    # Train counts (the users' first two ratings): 10 three times, 20 twice, 30 once.
    assert prepared.item_keys == ["10", "20", "30", "<oov>"]
    np.testing.assert_array_equal(prepared.item_counts, [3, 2, 1, 0])
    assert prepared.num_train == 6 and prepared.num_eval == 2 and prepared.num_validation == 3
    validation = records.read_all(prepared.validation_files)
    assert sorted((prepared.user_keys[u], prepared.item_keys[i]) for u, i in
                  zip(validation["user_id"], validation["item_id"])) == [("1", "20"), ("2", "20"), ("3", "30")]
    assert os.path.basename(prepared.directory) == movielens.PREPARED != "prepared-last1"  # never the old cache
    held_out = records.read_all(prepared.eval_files)
    pairs = {(prepared.user_keys[u], prepared.item_keys[i]) for u, i in zip(held_out["user_id"], held_out["item_id"])}
    assert pairs == {("1", "30"), ("3", "20")}
    genres, years = prepared.item_features["class:token_seq"], prepared.item_features["release_year:token"]
    assert (genres[0] >= 0).sum() == 2 and (genres[1] >= 0).sum() == 3
    assert (years[0] >= 0).sum() == 1 and years[0, 0] != years[1, 0]


@pytest.mark.slow
def test_real_movielens_from_the_recbole_wheel(tmp_path):
    try:
        prepared = movielens.prepared(str(tmp_path))
    except movielens.DownloadError as error:
        pytest.skip(f"PyPI unreachable, cannot fetch {movielens.WHEEL}: {error}")
    assert sorted(os.listdir(tmp_path / "ml-100k")) == sorted(movielens.FILES)
    assert prepared.num_users == 943
    with open(os.path.join(prepared.directory, "metadata.json")) as file:
        rows = json.load(file)["rows"]
    dropped = sum(rows["eval_dropped"].values()) + sum(rows["validation_dropped"].values())
    assert prepared.num_train + prepared.num_validation + prepared.num_eval + dropped == 100_000
    assert 900 < prepared.num_validation <= 943 and 900 < prepared.num_eval <= 943
    assert np.all(np.diff(prepared.item_counts) <= 0) and prepared.item_keys[0] == "50"  # Star Wars
    assert prepared.item_features["class:token_seq"].shape == (prepared.num_items, 6)


def test_unreachable_index_gives_a_one_line_reason_and_leaves_no_files(tmp_path, monkeypatch):
    for name, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
                        "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1",
                        "PIP_CONFIG_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(movielens.DownloadError, match=r"pip download --no-deps recbole==1\.2\.1` failed"):
        movielens.prepared(str(tmp_path))
    assert os.listdir(tmp_path) == []
