"""The study end to end at a tiny scale (two phase sources, one R) through the bundle runner, and its resume."""

from __future__ import annotations

import csv
import json

import pytest
from monai.bundle import ConfigWorkflow

from conftest import ROOT

TINY = {
    "phase_sources": ["ground_truth", "zero"],
    "accelerations": [4],
    "center_fraction": 0.125,
    "image_size": 32,
    "num_coils": 2,
    "simulate": {"num_subjects": 5, "slices_per_subject": 2},
    "varnet": {"epochs": 1, "progress_bar": False, "varnet_kwargs": {
        "num_cascades": 1, "features": [4, 8, 8, 8, 8, 4], "sens_features": [2, 4, 4, 4, 4, 2]}},
    "evaluation": {"l1_max_iter": 5, "n_bootstrap": 50, "l1_lambda_grid": [0.003, 0.03]},
    "realism": {"max_slices": 4, "classifier": {"epochs": 1, "channels": [4, 8, 8]}},
}


def _run(bundle_root, **extra):
    wf = ConfigWorkflow(config_file=str(ROOT / "configs" / "study.json"), workflow_type=None, meta_file=None,
                        logging_file=False, run_id="study", bundle_root=str(bundle_root), **{**TINY, **extra})
    wf.initialize()
    study = wf.parser.get_parsed_content("study_def")
    report = study.run()
    return study, report


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        study, report = _run(root, real_test_dir=str(root / "no_real_data"))
    finally:
        os.chdir(cwd)
    return root, study, report


def test_study_writes_the_report(finished):
    root, study, report = finished
    out = report.parent
    for name in ("report.md", "metrics_test_split.csv", "slices_test_split.csv", "realism.csv",
                 "metric_vs_R_test_split.png", "recon_grid_R4_test_split.png", "phase_gallery.png"):
        assert (out / name).is_file(), name
    text = report.read_text()
    assert "SIMULATED" in text and "R=4 PSNR" in text
    assert "chosen on the paired `val` split" in text and study.l1_tuning["lambda"] in (0.003, 0.03)
    with open(out / "metrics_test_split.csv") as f:
        rows = list(csv.DictReader(f))
    labels = {(r["label"] if r["method"] == "varnet" else r["method"]) for r in rows}
    assert labels == {"ground_truth", "zero", "zero_filled", "l1_wavelet"}
    for row in rows:
        assert float(row["ssim_ci_low"]) <= float(row["ssim_slice_mean"]) <= float(row["ssim_ci_high"])
    realism = {r["source"]: r for r in csv.DictReader(open(out / "realism.csv"))}
    assert float(realism["ground_truth"]["coherence"]) == pytest.approx(1.0, abs=1e-4)
    assert float(realism["ground_truth"]["gradient_distance"]) < 1e-3
    assert float(realism["zero"]["gradient_distance"]) > float(realism["ground_truth"]["gradient_distance"])


def test_resume_skips_finished_stages(finished, monkeypatch):
    root, study, _ = finished
    stages = root / "study" / "stages"
    (stages / "evaluate__test_split__zero.json").unlink()  # as if killed during that stage
    monkeypatch.chdir(ROOT)
    again, _ = _run(root, real_test_dir=str(root / "no_real_data"))
    assert again.timings["varnet/zero"] == 0.0 and again.timings["synthesize/ground_truth"] == 0.0
    assert again.timings["evaluate/test_split/zero"] > 0.0
    marker = json.loads((stages / "evaluate__test_split__zero.json").read_text())
    assert marker["result"].endswith("zero")
