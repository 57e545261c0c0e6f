"""data.prepare --runner=beam (data.beam_prepare, issue 20) against the in-process runner on the same logs: the
same vocabularies, ids, split, metadata.json and records (as multisets of parsed rows), on Beam's FnApiRunner
over two local worker processes."""

import json

import numpy as np
import pytest

from data import corpus, records
from tests.conftest import run_module

pytest.importorskip("apache_beam")

BEAM = ["--runner=beam", "--beam_options=--direct_num_workers=2"]
COLUMNS = ["--user_column=user", "--item_column=item"]


def _log_files(tmp_path):
    """Two files of one log: count ties (items b/c, users u1/u2), same-second rows (u0 at 5), items rarer than
    --min_item_count=2 (x, and y only in a held-out row), a user of one row, and three bad records."""
    first = ["user,item,time,weight",
             "u0,a,1,1", "u0,b,5,2", "u0,c,5,1", "u1,a,2,1", "u1,b,3,1", "u1,x,4,1", "u2,a,1,1",
             "u2,c,2,0.5", "u2,,3,1", "u3,a,7,1", "u1,a,zz,1"]
    second = ["user,item,time,weight",
              "u2,b,9,1", "u0,a,6,1", "u4,a,1,1", "u4,b,2,1", "u4,y,3,1", "u3,c,8,-1", "u5,a,1,1", "u5,c,1,1"]
    paths = []
    for name, lines in (("log-0.csv", first), ("log-1.csv", second)):
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return f"{tmp_path}/log-*.csv"


def _prepare(pattern, output_dir, *args):
    result = run_module("data.prepare", f"--input={pattern}", f"--output_dir={output_dir}", *COLUMNS, *args)
    return result


def _rows(directory, split):
    prepared = corpus.PreparedCorpus.load(str(directory))
    columns = records.read_all(prepared.eval_files if split == "eval" else prepared.train_files)
    names = sorted(columns)
    return names, sorted(map(repr, zip(*[np.round(columns[name], 6).tolist() for name in names])))


VARIANTS = {"timestamps_weights_and_histories": ["--timestamp_column=time", "--weight_column=weight",
                                                 "--history_length=2", "--num_shards=3"],
            # Without --num_shards Beam's runner picks the files (one per bundle), the in-process runner writes 4.
            "file_order": []}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """{variant: (directory, {runner: CompletedProcess})}: each variant's log prepared by both runners."""
    outputs = {}
    for variant, schema in VARIANTS.items():
        root = tmp_path_factory.mktemp(variant)
        pattern = _log_files(root)
        args = [*schema, "--min_item_count=2", "--eval_per_user=1", "--skip_bad_records"]
        results = {runner: _prepare(pattern, root / runner, *args, *extra)
                   for runner, extra in (("in_process", []), ("beam", BEAM))}
        for runner, result in results.items():
            assert result.returncode == 0, (variant, runner, result.stderr[-3000:])
        outputs[variant] = (root, results)
    return outputs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_both_runners_prepare_the_same_corpus(prepared, variant):
    tmp_path, _ = prepared[variant]
    schema = VARIANTS[variant]
    for name in ("item_vocabulary.tsv", "user_vocabulary.tsv"):
        assert (tmp_path / "beam" / name).read_text() == (tmp_path / "in_process" / name).read_text(), name
    np.testing.assert_array_equal(np.load(tmp_path / "beam" / "item_counts.npy"),
                                  np.load(tmp_path / "in_process" / "item_counts.npy"))
    metadata = {runner: json.loads((tmp_path / runner / "metadata.json").read_text())
                for runner in ("beam", "in_process")}
    assert metadata["beam"] == metadata["in_process"]
    rows = metadata["beam"]["rows"]
    bad = 3 if schema else 1  # without the time and weight columns only the empty item is bad
    assert rows["read"] == {"input": 19} and rows["bad_records"] == {"input": bad}
    assert rows["train"] + rows["eval"] + sum(rows["eval_dropped"].values()) + bad == 19
    assert rows["eval_dropped"]["rare_item"] + rows["eval_dropped"]["unseen_item"] >= 1  # u4's y
    for split in ("train", "eval"):
        assert _rows(tmp_path / "beam", split) == _rows(tmp_path / "in_process", split), split

    def listing(runner):
        names = sorted(path.name for path in (tmp_path / runner).iterdir())
        return names if schema else [name for name in names if not name.endswith(".tfrecord")]

    assert listing("beam") == listing("in_process")
    if "--history_length=2" in schema:
        for runner in ("beam", "in_process"):
            _assert_histories_are_data_history(tmp_path / runner, metadata[runner]["num_users"])


def _assert_histories_are_data_history(directory, num_users):
    """Each record's written history is data.history's over the training split; every user's latest too."""
    from data import history

    prepared = corpus.PreparedCorpus.load(str(directory))
    train, held_out = records.read_all(prepared.train_files), records.read_all(prepared.eval_files)
    log = history.history_log(train["user_id"], train["item_id"], train["timestamp"])
    for rows in (train, held_out):
        assert rows["history"].shape == (len(rows["user_id"]), 2)
        np.testing.assert_array_equal(rows["history"],
                                      history.histories_from_log(log, rows["user_id"], rows["timestamp"], 2))
    assert (train["history"] != history.PAD).any() and (train["history"] == history.PAD).any()
    users = np.arange(num_users)
    np.testing.assert_array_equal(records.read_latest_histories(str(directory), num_users, 2),
                                  history.histories_from_log(log, users, np.full(num_users, 2**62), 2))


def test_a_model_trained_on_either_runners_corpus_gets_the_same_held_out_metrics(prepared, tmp_path):
    """Same rows, same seed: the in-memory batches are of the rows in canonical order (data.pipeline), so the
    runners' different shard layouts (4 files in process, the runner's own with Beam) train the same model."""
    root, _ = prepared["file_order"]
    metrics = {}
    for runner in ("in_process", "beam"):
        model_dir = tmp_path / f"model-{runner}"
        trained = run_module("trainers.train", f"--data={root / runner}", f"--model_dir={model_dir}",
                             "--batch_size=4", "--num_sampled=3", "--embedding_dim=8", "--epochs=2",
                             "--steps_per_epoch=5", "--eval_top_k=3", "--noexport", "--projector_items=0", "--seed=5")
        assert trained.returncode == 0, trained.stderr[-3000:]
        metrics[runner] = json.loads((model_dir / "metrics.json").read_text())["model"]
        metrics[runner + "_fingerprint"] = json.loads((model_dir / "run_summary.json").read_text())[
            "weights_fingerprint"]
    assert metrics["beam_fingerprint"] == pytest.approx(metrics["in_process_fingerprint"], rel=1e-6)
    for name, value in metrics["in_process"].items():
        assert metrics["beam"][name] == pytest.approx(value, abs=1e-6), name


def test_the_first_bad_record_stops_the_beam_run_in_one_line_and_nothing_is_written(tmp_path):
    pattern = _log_files(tmp_path)
    result = _prepare(pattern, tmp_path / "out", "--timestamp_column=time", "--weight_column=weight", *BEAM)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"data.prepare: {tmp_path}/log-0.csv:10: empty key in column 'item'")
    assert not (tmp_path / "out").exists()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no staging left


def test_an_option_not_on_the_beam_runner_is_refused_in_one_line(tmp_path):
    pattern = _log_files(tmp_path)
    result = _prepare(pattern, tmp_path / "out", "--timestamp_column=time", "--split=random", *BEAM)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "data.prepare: --split=random: not on --runner=beam yet; prepare this log with --runner=in_process")
    result = _prepare(pattern, tmp_path / "out", "--timestamp_column=time", "--validation_per_user=1", *BEAM)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "data.prepare: --validation_per_user=1: not on --runner=beam yet; prepare this log with --runner=in_process")
    result = _prepare(pattern, tmp_path / "out", "--beam_options=--direct_num_workers=2")
    assert result.returncode == 1 and "--beam_options is read only with --runner=beam" in result.stderr
    assert not (tmp_path / "out").exists()
