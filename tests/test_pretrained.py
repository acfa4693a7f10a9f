"""The shipped phase model: it is the one its card describes, it fits the default network, and inference on a
fresh clone runs with it (no training, no --ckpt_path)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from archive_helpers import bundle_cli, head
from conftest import ROOT
from scripts.configs import PRETRAINED_PHASE_MODEL, parsed
from scripts.io.checkpoint import load_weights
from scripts.phase.model_card import sha256

WEIGHTS = ROOT / PRETRAINED_PHASE_MODEL
CARD = WEIGHTS.parent / "card.json"


def test_the_card_describes_the_shipped_weights():
    card = json.loads(CARD.read_text())
    assert card["sha256"] == sha256(WEIGHTS) and card["bytes"] == WEIGHTS.stat().st_size
    assert {t["data"] for t in card["test_sets"].values()} <= {"simulated", "real"}
    simulated = card["test_sets"]["simulated_test_split"]["sources"]
    # the bar of the issue: at least as realistic as the smooth baseline on the simulated test split
    assert simulated["diffusion"]["auroc"] <= simulated["smooth"]["auroc"]
    assert simulated["diffusion"]["gradient_distance"] <= simulated["smooth"]["gradient_distance"]


def test_the_shipped_weights_fit_the_default_network():
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    net = load_weights(parsed("common.json", "network_def"), WEIGHTS)  # strict: every tensor, every shape
    assert parsed("inference.json", "ckpt_path").endswith(PRETRAINED_PHASE_MODEL)
    assert parsed("inference.json", "sampler_type") == json.loads(CARD.read_text())["sampler"]["scheduler"]
    assert next(net.parameters()).dtype == torch.float32


def test_inference_runs_out_of_the_box(tmp_path):
    (tmp_path / "in").mkdir()
    magnitude = (head(64, 64) * 180).astype(np.uint8)
    Image.fromarray(magnitude).save(tmp_path / "in" / "slice.png")
    run = bundle_cli("inference", "inference.json", ["--input_dir", tmp_path / "in", "--output_dir", tmp_path / "out",
                                                     "--num_samples", 1, "--num_inference_steps", 4, "--write_png", "false"])
    assert run.returncode == 0, run.stderr[-2000:]
    (sample,) = sorted((tmp_path / "out").glob("*_sample0.nii.gz"))
    z = np.asarray(nib.load(sample).dataobj).squeeze()
    assert np.iscomplexobj(z)
    np.testing.assert_allclose(np.abs(z), magnitude.astype(np.float32).T if z.shape != magnitude.shape else magnitude,
                               rtol=1e-6, atol=1e-4)
