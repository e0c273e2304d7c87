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
    assert set(speeds) == {"vaelab", "plain", "plain_tuned"} and all(s["median"] > 0 for s in speeds.values())
    assert result["ratios"]["vaelab/plain"] == round(speeds["vaelab"]["median"] / speeds["plain"]["median"], 3)
    assert set(result["iwae"]) == {"eager"}  # the compiled case is skipped with --skip-compile
    iwae = result["iwae"]["eager"]
    assert iwae["images"] == 30 and iwae["k"] == 20 and iwae["decoder_flops_per_sample"] == 2 * (10 * 300 + 300 * 300 + 300 * 784)
    assert 0 < iwae["fraction_of_bound"] == round(iwae["samples_per_second"] / iwae["flop_bound_samples_per_second"], 3)
    assert result["machine"]["torch"].startswith(str(__import__("torch").__version__)[:4])


def test_ablations_undo_one_choice_at_a_time(tiny_data, tmp_path):
    out = tmp_path / "ablations.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ablations.py"), "--data-dir", str(tiny_data), "--steps", "10",
                           "--repeats", "1", "--images", "20", "--k", "20", "--variants", "default,adam-foreach,torch-bernoulli,bernoulli-draw",
                           "--out", str(out)], check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(out.read_text())
    assert set(result["training_images_per_second"]) == {"default", "adam-foreach", "torch-bernoulli", "bernoulli-draw"}
    assert {"default", "torch-bernoulli", "budget-2^20", "gmvae-default", "gmvae-mixture-same-family"} <= set(result["iwae_samples_per_second"])
    assert "train bernoulli-draw" in proc.stdout


def test_the_tried_alternatives_compute_the_same_quantities():
    """The ablations compare speed only if the alternatives are exact: torch's Bernoulli gives
    vaelab's log-density."""
    import importlib.util

    import torch
    from torch.distributions import Bernoulli, Independent

    spec = importlib.util.spec_from_file_location("ablations", ROOT / "bench" / "ablations.py")
    ablations = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablations)
    torch.manual_seed(0)
    logits = torch.cat([torch.randn(3, 5, 10, dtype=torch.float64) * 4, torch.full((3, 5, 2), 60.0, dtype=torch.float64),
                        torch.full((3, 5, 2), -60.0, dtype=torch.float64)], -1)
    x = torch.bernoulli(torch.full((5, 14), 0.5, dtype=torch.float64))
    from vaelab.distributions.likelihoods import BernoulliLikelihood

    torch.testing.assert_close(ablations.torch_bernoulli(None, logits).log_prob(x), BernoulliLikelihood()(logits).log_prob(x))
    torch.testing.assert_close(ablations.torch_bernoulli(None, logits).log_prob(x), Independent(Bernoulli(logits=logits), 1).log_prob(x))


def test_step_overhead_interleaves_the_three_steps(tiny_data, tmp_path):
    out = tmp_path / "steps.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "step_overhead.py"), "--data-dir", str(tiny_data), "--steps", "5",
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    medians = result["median_ms_per_step"]
    assert set(medians) == {"vaelab", "plain", "plain_tuned"} and all(v > 0 for v in medians.values())
    assert result["ratios"]["vaelab/plain"] == round(medians["plain"] / medians["vaelab"], 3)


def test_gpu_benchmark_runs_on_the_cpu_and_names_its_device(tiny_data, tmp_path):
    """bench/gpu.py on the CPU with a few steps: both batch sizes against the plain loop, the full-protocol
    evaluation at fp32 and bf16 (tf32 is CUDA's) with bf16's difference from fp32."""
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--data-dir", str(tiny_data), "--device", "cpu", "--steps-100", "12",
                    "--steps-1000", "3", "--large-batch", "200", "--iw", "1,5", "--eval-images", "40", "--out", str(out)], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu")
    for batch in ("batch_100", "batch_200"):
        case = result["training"][batch]
        assert case["vaelab_images_per_second"] > 0 and case["plain_images_per_second"] > 0
        assert case["vaelab/plain"] == round(case["vaelab_images_per_second"] / case["plain_images_per_second"], 3)
    evaluation = result["evaluation_full_protocol"]
    assert evaluation["images"] == 40 and set(evaluation) == {"images", "fp32", "bf16"}
    difference = evaluation["bf16"]["difference_from_fp32"]["niwae_5"]
    assert difference == round(evaluation["bf16"]["niwae_5"] - evaluation["fp32"]["niwae_5"], 4)
