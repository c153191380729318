"""The training-throughput benchmark runs end to end and prints its ratio line."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"


@pytest.mark.slow
def test_quick_benchmark_prints_ratio(tmp_path):
    out = tmp_path / "train_throughput.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = re.search(r"^train_throughput ratio \(phiforge / HF Trainer\): (\d+\.\d\d)x$", proc.stdout, re.M)
    assert match, proc.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["ratio"] == pytest.approx(float(match.group(1)), abs=0.006)
    assert result["max_param_diff"] < 1e-4  # both loops did the same optimisation
    assert {"phiforge Trainer", "HF transformers.Trainer"} <= set(result["summary"])
