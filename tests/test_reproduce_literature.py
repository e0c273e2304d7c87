"""`vaelab reproduce literature`: every paper's protocol builds as a valid config, and the suite's machinery (epochs
cap, early stopping or budget, a run continued to a larger cap, the reproducibility table) works on tiny data."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vaelab.cli import main
from vaelab.report import literature
from vaelab.report.reproduce import SUITES
from vaelab.training import load_preset, set_key, validate


@pytest.mark.parametrize("exp", literature.LITERATURE, ids=lambda e: e.name)
def test_each_papers_protocol_is_a_valid_config(exp):
    cfg = load_preset(exp.preset)
    for key, value in exp.overrides.items():
        set_key(cfg, key, value)
    cfg.train.epochs = exp.epochs
    validate(cfg)
    assert exp.iws == (5000,) and exp.protocol == "full" and exp.headline == ("niwae_5000",)
    paper = literature._paper(exp)
    assert 75 < paper.value < 90 and paper.binarization in ("dynamic", "static") and paper.samples == 5000


def test_the_iwae_schedule_is_the_papers():
    """3^i passes at lr 1e-3 10^(-i/7): the rate drops by 10^(-1/7) after epochs 1, 4, 13, ..., 1093 of 3,000 steps."""
    schedule = literature.IWAE_SCHEDULE
    assert schedule["train.lr_milestones"] == [3000 * e for e in (1, 4, 13, 40, 121, 364, 1093)]
    assert schedule["train.lr_decay"] ** 7 == pytest.approx(0.1)
    assert literature.IWAE_EPOCHS == sum(3 ** i for i in range(8))


def _tiny(exp, **overrides):
    """The experiment on the tiny data: its protocol with small networks, 100 held-out images, IWAE-10."""
    settings = {**exp.overrides, "data.validation": 100, "train.eval_every": 1, "train.eval_unit": "epochs",
                "objective.kl_warmup_steps": 20, "train.log_every": 5, "train.checkpoint_every": 25, "train.batch_size": 20,
                "train.threads": 1, **overrides}
    settings = {k: v for k, v in settings.items() if not k.startswith("model.")} | {"model.hidden": [16]}
    if exp.preset == "vae":
        settings["model.z_dim"] = 3
    else:
        settings["model.z_dims"] = [3, 2]
    paper = literature._paper(exp)
    return dataclasses.replace(exp, overrides=settings, iws=(10,), headline=("niwae_10",), epochs=4,
                               reference={"niwae_10": {"paper": paper}})


def test_a_capped_literature_run_reports_its_budget_and_continues(tiny_data, tmp_path, monkeypatch, capsys):
    by_name = {e.name: e for e in literature.LITERATURE}
    tiny = (_tiny(by_name["vamp_vae"]), _tiny(by_name["vamp_hvae"], **{"train.patience": 1}))
    monkeypatch.setitem(SUITES, "literature", tiny)
    out = tmp_path / "out"
    args = ["reproduce", "literature", "--out", str(out), "--data-dir", str(tiny_data), "--device", "cpu", "--no-progress"]
    assert main([*args, "--epochs", "2"]) == 0
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "paper (" not in line]
    assert len(rows) == 2
    vae = json.loads((out / "runs" / "vamp_vae-seed0" / "summary.json").read_text())
    assert vae["epochs"] == 2 and vae["stopped"] == "budget" and "budget cap" in rows[0]
    assert "84.50 (dynamic, 5000)" in rows[0] and "2.0 (4)" in rows[0]
    assert "the paper's budget would take" in report
    assert (out / "figures" / "validation.png").is_file()
    hvae = json.loads((out / "runs" / "vamp_hvae-seed0" / "summary.json").read_text())
    assert hvae["stopped"] in ("early stopping", "budget")
    # A larger cap continues the capped run (its checkpoints, not a new start) to the protocol's 4 epochs.
    assert main([*args, "--epochs", "10"]) == 0
    vae = json.loads((out / "runs" / "vamp_vae-seed0" / "summary.json").read_text())
    assert vae["epochs"] == 4 and vae["resumed_from_step"] == 2 * 25
    history = [json.loads(line) for line in (out / "runs" / "vamp_vae-seed0" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["event"] == "resume" and history[-1]["changes"]["train.epochs"] == [2, 4]


def test_the_report_alone_shows_runs_as_far_as_they_got(tiny_data, tmp_path, monkeypatch, capsys):
    by_name = {e.name: e for e in literature.LITERATURE}
    tiny = (_tiny(by_name["vamp_vae"]), _tiny(by_name["vamp_hvae"]))
    monkeypatch.setitem(SUITES, "literature", tiny)
    out = tmp_path / "out"
    args = ["reproduce", "literature", "--out", str(out), "--data-dir", str(tiny_data), "--device", "cpu", "--no-progress"]
    assert main([*args, "--report-only"]) == 1  # nothing to report yet: one line
    assert "holds no run" in capsys.readouterr().err
    assert main([*args, "--epochs", "1", "--only", "vamp_vae"]) == 0
    run = out / "runs" / "vamp_vae-seed0"
    (run / "summary.json").unlink()  # as a run still training looks: no summary yet
    before = sorted(p.name for p in run.iterdir())
    assert main([*args, "--report-only"]) == 0
    assert sorted(p.name for p in run.iterdir()) == before  # nothing trained or evaluated
    report = (out / "report.md").read_text()
    assert "not yet: still training" in report and "vamp_hvae" not in report.split("## Sources")[1]
