import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_bench_prints_every_configuration_with_ratios(tmp_path):
    output = tmp_path / "benchmarks.md"
    command = [
        sys.executable,
        "scripts/bench.py",
        "--sizes=3000",
        "--num_users=500",
        "--num_interactions=20000",
        "--num_sampled=100",
        "--batch_size=256",
        "--steps=5",
        "--warmup_steps=2",
        "--dense_steps=2",
        "--repeats=1",
        f"--cache_dir={tmp_path / 'cache'}",
        f"--output={output}",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = output.read_text()
    for name in ("trainer: sampled_softmax", "trainer: sampled_softmax, streaming input", "trainer: nce", "trainer: in_batch", "trainer: full_softmax",
                 "plain tf.nn.sampled_softmax_loss + lazy_adam", "plain tf.nn.sampled_softmax_loss + adam"):
        row = next(line for line in table.splitlines() if f"| {name} |" in line)
        assert "failed" not in row and "GiB" in row, row
    plain_row = next(line for line in table.splitlines() if "+ lazy_adam |" in line)
    assert "| 1.00x |" in plain_row
    assert "sampled softmax is" in table and "x full softmax" in table
