"""Settings a real run cannot meet, or that would do nothing, are refused in one line naming the flag before
anything is read or written; a restart never mixes two models in one model_dir (issue 25's cases)."""

import json

import pytest

from tests.conftest import TINY_CORPUS, run_module


def _last_line(result):
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("flag, expected", [
    ("--history_length=1000000000", "--history_length=1000000000: 1000000000 is not an integer in the range [1, 10000]"),
    ("--logged_negative_weight=inf", "--logged_negative_weight=inf: expected a finite number"),
    ("--learning_rate=nan", "--learning_rate=nan: expected a finite number"),
    ("--context_features=device,price", "--context_features=device,price is read only with context in --query_features"),
])
def test_a_setting_no_run_can_meet_is_a_one_line_refusal(flag, expected, tmp_path):
    model_dir = tmp_path / "model"
    result = run_module("trainers.train", f"--model_dir={model_dir}", f"--cache_dir={tmp_path / 'cache'}", flag)
    _last_line(result)
    # The trainer's own error line, or absl's for a flag out of its bounds (TensorFlow's CUDA probe may log too).
    error_lines = [line for line in result.stderr.splitlines()
                   if line.startswith(("train.py: error:", "FATAL Flags parsing error:"))]
    assert len(error_lines) == 1 and expected in error_lines[0], result.stderr[-3000:]
    assert not model_dir.exists() and not (tmp_path / "cache").exists(), "refused before anything is written"


def test_time_context_on_a_log_without_timestamps_is_refused(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item\n" + "".join(f"u{row % 20},i{row % 7}\n" for row in range(400)))
    corpus = tmp_path / "corpus"
    prepared = run_module("data.prepare", f"--input={log}", f"--output_dir={corpus}", "--user_column=user",
                          "--item_column=item")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    result = run_module("trainers.train", f"--data={corpus}", f"--model_dir={tmp_path / 'model'}",
                        "--query_features=history,context", "--batch_size=32", "--num_sampled=4", "--eval_top_k=5",
                        "--export_top_k=5")
    line = _last_line(result)
    assert "--context_features=hour_of_day,day_of_week" in line and "without --timestamp_column" in line, line
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_restart_with_another_history_encoder_is_refused_and_leaves_the_run_alone(tmp_path):
    model_dir = tmp_path / "model"
    run = [f"--model_dir={model_dir}", f"--cache_dir={tmp_path / 'cache'}", *TINY_CORPUS, "--projector_items=0",
           "--epochs=1", "--steps_per_epoch=10", "--checkpoint_every_steps=10", "--noexport"]
    first = run_module("trainers.train", *run)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((model_dir / "config.json").read_text())["model"]["history_encoder"] == "weighted_mean"
    written = {path.name: path.read_bytes() for path in model_dir.rglob("*") if path.is_file()}
    for change in ("--history_encoder=mean", "--query_features=user_id", "--history_length=20"):
        line = _last_line(run_module("trainers.train", *run, "--epochs=2", change))
        name = change.split("=")[0]
        assert "ckpt-10 does not fit this run's model" in line and f"{change}, but" in line, line
        assert f"was trained with {name}=" in line and "--model_dir" in line, line
        assert {path.name: path.read_bytes() for path in model_dir.rglob("*") if path.is_file()} == written
    resumed = run_module("trainers.train", *run, "--epochs=2", "--learning_rate=0.001")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((model_dir / "run_summary.json").read_text())["restored_from_step"] == 10
