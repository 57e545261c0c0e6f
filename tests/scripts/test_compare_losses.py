import re
import sys

from tests.conftest import REPO_ROOT

import subprocess


def test_compare_losses_writes_table_and_plot(tmp_path):
    command = [
        sys.executable,
        "scripts/compare_losses.py",
        f"--output_dir={tmp_path / 'out'}",
        f"--work_dir={tmp_path / 'work'}",
        "--only=full_softmax,log-uniform",
        "--num_items=2000",
        "--num_users=1000",
        "--num_interactions=40000",
        "--num_sampled=100",
        "--batch_size=256",
        "--epochs=2",
        "--steps_per_epoch=30",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "out" / "compare_losses.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split("|")[1].strip() for row in rows] == ["full_softmax", "sampled_softmax (log-uniform, log-Q)"]
    assert "| 100% |" in rows[0]
    recalls = [float(row.split("|")[4]) for row in rows]
    assert all(0.0 < recall <= 1.0 for recall in recalls)
    assert re.search(r"Most-popular baseline recall@100: 0\.\d{4}", table)
    png = (tmp_path / "out" / "compare_losses.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
