"""The benchmark scripts run end to end on tiny data (pythae, which lives in bench/.venv only, skipped)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_reports_ratios_and_the_flop_bound(tiny_data, tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--data-dir", str(tiny_data), "--steps", "15", "--repeats", "1",
                    "--k", "20", "--iwae-images", "30", "--skip-pythae", "--skip-compile", "--out", str(out)], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["matmul_gflops"]["square_2048"] > 0
    speeds = result["training_images_per_second"]
    assert set(speeds) == {"vaelab", "plain", "plain_fused_adam"} and all(s["median"] > 0 for s in speeds.values())
    assert result["ratios"]["vaelab/plain"] == round(speeds["vaelab"]["median"] / speeds["plain"]["median"], 3)
    iwae = result["iwae"]
    assert iwae["images"] == 30 and iwae["k"] == 20 and iwae["decoder_flops_per_sample"] == 2 * (10 * 300 + 300 * 300 + 300 * 784)
    assert 0 < iwae["fraction_of_bound"] == round(iwae["samples_per_second"] / iwae["flop_bound_samples_per_second"], 3)
    assert result["machine"]["torch"].startswith(str(__import__("torch").__version__)[:4])


def test_ablations_undo_one_choice_at_a_time(tiny_data, tmp_path):
    out = tmp_path / "ablations.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ablations.py"), "--data-dir", str(tiny_data), "--steps", "10",
                           "--repeats", "1", "--images", "20", "--k", "20", "--variants", "default,adam-foreach,torch-bernoulli",
                           "--out", str(out)], check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(out.read_text())
    assert set(result["training_images_per_second"]) == {"default", "adam-foreach", "torch-bernoulli"}
    assert {"default", "torch-bernoulli", "budget-2^20"} <= set(result["iwae_samples_per_second"])
    assert "train torch-bernoulli" in proc.stdout
