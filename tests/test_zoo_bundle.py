"""``python -m scripts.zoo``: a model-zoo bundle that passes the zoo's checks from a zoo-like root folder
(cwd holding ``models/<bundle>``, as the zoo's ``ci/verify_bundle.py`` runs) and runs inference on its own
copy of the code."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from conftest import ROOT, python_path
from scripts.configs import parsed
from scripts.io.magnitude import load_magnitude, slices_to_volume
from scripts.zoo.__main__ import main
from scripts.zoo.build import CKPT_PATH
from test_diffusion import TINY_NET, make_inputs

NAME = "mri_phase_synthesis"
SCHEMA = ROOT / "configs" / "schema" / "meta_schema_20240725.json"
FIGURES = {"slices": 4, "volumes": 2, "coherence": 0.25, "coherence_ci_low": 0.2, "coherence_ci_high": 0.3,
           "gradient_distance": 0.5, "spectrum_distance": 0.75, "auroc": float("nan")}
CARD = {  # the layout scripts.phase.model_card writes
    "sampler": {"network_overrides": {k: v for k, v in TINY_NET.items() if k != "image_size"},  # image_size: --set
                "num_inference_steps": 3},
    "recipe": {"command": "random weights (a test)"},
    "test_sets": {"simulated_test_split": {"data": "simulated", "folder": "test",
                                           "sources": {"diffusion": FIGURES, "smooth": FIGURES}}},
}


def _build(root, *extra) -> int:
    torch.manual_seed(0)
    torch.save(parsed("common.json", "network_def", **TINY_NET).state_dict(), root / "weights.pt")
    digest = hashlib.sha256((root / "weights.pt").read_bytes()).hexdigest()
    (root / "card.json").write_text(json.dumps({"sha256": digest, **CARD}))
    return main(["--checkpoint", str(root / "weights.pt"), "--output", str(root / "models" / NAME),
                 "--card", str(root / "card.json"), "--set", "image_size=32", *extra])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    assert _build(root) == 0
    return root


def test_layout_configs_and_metadata(zoo):
    bundle = zoo / "models" / NAME
    for f in ("configs/inference.json", "configs/train.json", "configs/multi_gpu_train.json", "configs/logging.conf",
              "configs/metadata.json", "docs/README.md", "LICENSE", "models/model.pt", "scripts/synthesis/inference_io.py"):
        assert (bundle / f).is_file(), f
    assert not (bundle / "scripts" / "zoo").exists() and not list(bundle.rglob("__pycache__"))
    assert not list(bundle.glob("large_files.*"))
    for config in (bundle / "configs").glob("*.json"):
        assert "common.json" not in config.read_text() and '"%' not in config.read_text(), config.name
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["ckpt_path"] == CKPT_PATH and inference["image_size"] == 32 and inference["num_inference_steps"] == 3
    train = ConfigParser(json.loads((bundle / "configs" / "train.json").read_text()))
    train["bundle_root"] = str(bundle)
    assert train.get_parsed_content("ckpt_dir") == str(bundle / "models")

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    net = ConfigParser(inference)
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == net.get_parsed_content("network_def#in_channels") == 3  # noisy phasor + magnitude
    assert pred["num_channels"] == net.get_parsed_content("network_def#out_channels") == 2
    assert image["spatial_shape"] == [32, 32] and "timesteps" in meta["network_data_format"]["inputs"]
    pipeline = meta["pipeline_data_format"]
    assert list(pipeline["inputs"]) == ["magnitude"] and set(pipeline["outputs"]) == {"complex", "phase", "phase_spread"}
    assert meta["eval_metrics"] == {"simulated_test_split_coherence": 0.25, "simulated_test_split_gradient_distance": 0.5,
                                    "simulated_test_split_spectrum_distance": 0.75}  # NaN left out
    assert meta["version"] in meta["changelog"]

    saved = torch.load(bundle / "models" / "model.pt", weights_only=True)
    original = torch.load(zoo / "weights.pt", weights_only=True)
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)
    readme = (bundle / "docs" / "README.md").read_text()
    for text in ("SIMULATED", "scripts.simulate.dataset", "random weights (a test)", "| `diffusion` | 0.250 [0.200, 0.300] |",
                 "MB"):
        assert text in readme, text


@pytest.mark.filterwarnings("ignore:No hash value provided")  # the schema kept in the repo has no published hash
def test_zoo_checks_from_a_zoo_root(zoo, monkeypatch):
    """verify_bundle.py's checks, relative to the zoo's root (the repository's ``scripts`` is already imported
    here; the subprocess test below shows the bundle's own copy at work)."""
    monkeypatch.chdir(zoo)
    bundle = os.path.join("models", NAME)
    meta, config = os.path.join(bundle, "configs", "metadata.json"), os.path.join(bundle, "configs", "inference.json")
    for f in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json", "docs/README.md"):
        assert os.path.isfile(os.path.join(bundle, f)), f
    verify_metadata(meta_file=meta, filepath=str(SCHEMA))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, bundle_root=bundle, device="cpu",
                      extra_forward_args={"timesteps": torch.zeros(1, dtype=torch.long)})
    try:
        ckpt_export(net_id="network_def", filepath=os.path.join(bundle, "models", "verify_model.ts"),
                    ckpt_file=os.path.join(bundle, "models", "model.pt"), meta_file=meta, config_file=config,
                    bundle_root=bundle)
        exported = True
    except RuntimeError:  # DiffusionModelUNet does not script
        exported = False
    readme = open(os.path.join(bundle, "docs", "README.md")).read()
    assert ("exclude_verify_torchscript_list" in readme) == (not exported)


def test_inference_cli_inside_the_bundle(zoo):
    bundle = zoo / "models" / NAME
    vol = make_inputs(zoo / "in")
    out = zoo / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path(bundle)}  # the bundle, not the repository
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.json",
           "--bundle_root", ".", "--input_dir", str(zoo / "in"), "--output_dir", str(out), "--num_inference_steps", "2",
           "--num_samples", "1", "--initialize", "$[print('scripts from', scripts.__file__), monai.utils.set_determinism(seed=@seed)]"]
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"scripts from {bundle / 'scripts' / '__init__.py'}" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert len(report["skipped"]) == 1  # broken.png
    png = load_magnitude(zoo / "in" / "scan.png")
    expected = {"nifti": vol, "png": slices_to_volume(png, np.asarray(png.magnitude))}
    assert sorted(w["kind"] for w in report["written"]) == ["nifti", "png"]
    for w in report["written"]:
        z = np.asarray(nib.load(out / f"{w['id']}_sample0.nii.gz").dataobj)
        mag = expected[w["kind"]]
        assert z.dtype == np.complex64 and z.shape == mag.shape
        rel = np.abs(np.abs(z) - mag) / np.maximum(mag, np.finfo(np.float32).tiny)
        assert rel.max() < 1e-6, w["kind"]  # the input magnitude, exactly
        assert (out / f"{w['id']}_phase_spread.nii.gz").is_file()


def test_half_precision_and_refused_checkpoints(zoo, tmp_path, capsys):
    assert _build(tmp_path, "--half") == 0
    half = torch.load(tmp_path / "models" / NAME / "models" / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in half.values() if v.is_floating_point())
    sizes = [(root / "models" / NAME / "models" / "model.pt").stat().st_size for root in (tmp_path, zoo)]
    assert sizes[0] < 0.6 * sizes[1]
    assert "float16" in capsys.readouterr().out

    weights = str(zoo / "weights.pt")
    for checkpoint, reason in ((weights, "does not match the bundle's network"),  # no card: the default network
                               (str(tmp_path / "absent.pt"), "no such file"),
                               (str(zoo / "card.json"), "not a PyTorch checkpoint")):
        assert main(["--checkpoint", checkpoint, "--output", str(tmp_path / "refused")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"zoo: {checkpoint}: {reason}"), err
    other = tmp_path / "other_card.json"
    other.write_text(json.dumps({**CARD, "sha256": "0" * 64}))
    assert main(["--checkpoint", weights, "--card", str(other), "--set", "image_size=32", "--output", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"zoo: {other}: made for another checkpoint"), err
    assert not (tmp_path / "refused").exists()


def test_varnet_bundle_passes_the_checks_and_reconstructs(tmp_path, monkeypatch):
    """The VarNet bundle: every zoo check passes (TorchScript export included), figures come from a study report,
    and its inference runs on its own copy of the code (PYTHONPATH = the bundle only)."""
    import csv

    from scripts.io.fastmri_h5 import write_fastmri
    from scripts.recon.varnet import varnet_profile, write_network_spec
    from scripts.recon.varnet_model import build_varnet

    kwargs = varnet_profile("cpu")
    (tmp_path / "train").mkdir()
    torch.save(build_varnet(**kwargs).state_dict(), tmp_path / "train" / "model.pt")
    write_network_spec(tmp_path / "train", kwargs)
    report = tmp_path / "report"
    report.mkdir()
    rows = [{"label": label, "method": method, "acceleration": 4.0, **{f"{m}_{k}": v for m, v in figures.items()
                                                                      for k in ("slice_mean", "ci_low", "ci_high")}}
            for label, method, figures in (("diffusion", "varnet", {"psnr": 20.0, "ssim": 0.6, "nmse": 0.1}),
                                           ("gan", "varnet", {"psnr": 30.0, "ssim": 0.9, "nmse": 0.01}),
                                           ("reference", "zero_filled", {"psnr": 21.0, "ssim": 0.5, "nmse": 0.2}))]
    with open(report / "metrics_real.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    bundle = tmp_path / "models" / "mri_varnet_synthetic"
    monkeypatch.chdir(tmp_path)  # the zoo's root folder
    assert main(["--kind", "varnet", "--checkpoint", str(tmp_path / "train" / "model.pt"), "--report", str(report),
                 "--output", str(bundle)]) == 0
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] == {"real_R4_psnr": 20.0, "real_R4_ssim": 0.6, "real_R4_nmse": 0.1}  # its source only
    readme = (bundle / "docs" / "README.md").read_text()
    assert "ckpt_export: passed" in readme and "BELOW zero-filled in PSNR at R=4" in readme and "30.00" not in readme
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))

    kspace = (np.random.default_rng(0).standard_normal((2, 4, 32, 32)) + 1j).astype(np.complex64)
    (tmp_path / "in").mkdir()
    write_fastmri(tmp_path / "in" / "case.h5", kspace)
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                          "--bundle_root", ".", "--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out")],
                         cwd=bundle, env={**os.environ, "PYTHONPATH": str(bundle)}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    import h5py

    with h5py.File(tmp_path / "out" / "case.h5") as f:
        assert f["reconstruction"].shape == (2, 32, 32)
