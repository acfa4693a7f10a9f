"""VarNet inference on a folder (configs/varnet_inference.json): fastMRI files in, reconstruction files out.

At initialisation the VarNet is pure data consistency, so its reconstruction must equal the zero-filled RSS of
the masked k-space: that pins the mask (stored or fixed per file and slice), the scaling and the layout.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from scripts.configs import run_bundle
from scripts.core.masks import MaskSampler
from scripts.io.fastmri_h5 import rss, write_fastmri
from scripts.recon.varnet import varnet_profile
from scripts.recon.varnet_model import build_varnet
from scripts.synthesis.synthesize import OneLineExit

SHAPE = (2, 4, 32, 24)  # slices, coils, H, W


def _kspace(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(SHAPE) + 1j * rng.standard_normal(SHAPE)).astype(np.complex64)


@pytest.fixture()
def folder(tmp_path):
    data = tmp_path / "in" / "PATIENT_ZZDOE"
    data.mkdir(parents=True)
    write_fastmri(data / "full.h5", _kspace(0))
    stored = np.zeros(SHAPE[-1], dtype=bool)
    stored[[0, 5, 10, 11, 12, 13, 18]] = True
    write_fastmri(data / "under.h5", _kspace(1) * stored, extra={"mask": stored})
    (data / "broken.h5").write_bytes(b"not hdf5")
    ckpt = tmp_path / "model.pt"
    torch.save(build_varnet(**varnet_profile("cpu")).state_dict(), ckpt)
    return tmp_path, data, stored, ckpt


def test_folder_reconstruction_matches_zero_filled_at_init(folder):
    tmp, data, stored, ckpt = folder
    out = tmp / "out"
    run_bundle("configs/varnet_inference.json", input_dir=str(tmp / "in"), output_dir=str(out), ckpt_path=str(ckpt),
               acceleration=4, device="$torch.device('cpu')")
    report = json.loads((out / "report.json").read_text())
    assert sorted(w["output"] for w in report["written"]) == ["full.h5", "under.h5"]
    (bad,) = report["skipped"]
    assert "not a readable HDF5 file" in bad["reason"] and "\n" not in bad["reason"]
    assert "ZZDOE" not in (out / "report.json").read_text() and not any("ZZDOE" in str(p) for p in out.rglob("*"))
    sampler = MaskSampler("equispaced", [4.0], 0.08, seed=0)
    for name, masks in (("full.h5", [sampler.fixed(SHAPE[-2:], ("full.h5", s), 4.0)[0] for s in range(2)]),
                        ("under.h5", [stored[None]] * 2)):
        with h5py.File(data / name) as f:
            kspace = np.asarray(f["kspace"])
        with h5py.File(out / name) as f:
            recon = np.asarray(f["reconstruction"])
        assert recon.shape == (2, 32, 24) and recon.dtype == np.float32
        expected = np.stack([rss(k * m) for k, m in zip(kspace, masks)])
        np.testing.assert_allclose(recon, expected, rtol=1e-4, atol=1e-5 * expected.max())


def test_missing_or_mismatched_checkpoint_is_one_line(folder, tmp_path):
    tmp, _, _, _ = folder
    with pytest.raises(OneLineExit, match="VarNet checkpoint not found"):
        run_bundle("configs/varnet_inference.json", input_dir=str(tmp / "in"), output_dir=str(tmp / "o1"),
                   ckpt_path=str(tmp / "none.pt"))
    other = tmp / "full_profile.pt"
    torch.save(build_varnet(**varnet_profile("full")).state_dict(), other)
    with pytest.raises(OneLineExit, match="does not fit the configured VarNet") as err:
        run_bundle("configs/varnet_inference.json", input_dir=str(tmp / "in"), output_dir=str(tmp / "o2"),
                   ckpt_path=str(other))
    assert "\n" not in str(err.value.code)
