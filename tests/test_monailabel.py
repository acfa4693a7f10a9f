"""MONAI Label: the phase-synthesis task on 2-D and 3-D NIfTI, and the app folder as MONAI Label loads it.

The task needs only the ``monailabel`` package (CI installs it with ``--no-deps``); the app-folder test
needs MONAI Label's server stack (``requirements-monailabel.txt``) and skips where it does not import.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from archive_helpers import head
from scripts.configs import ROOT

pytest.importorskip("monailabel.interfaces.tasks.infer_v2", reason="monailabel is not installed (requirements-monailabel.txt)")

from scripts.label.infer import PhaseSynthesisTask  # noqa: E402

FAST = {"num_samples": 2, "num_inference_steps": 2}
AFFINE = np.diag([0.9, 1.1, 3.0, 1.0])


def _nifti(path, magnitude):
    nib.save(nib.Nifti1Image(magnitude.astype(np.float32), AFFINE), path)
    return path


def _check(result_file, params, magnitude):
    phase = nib.load(result_file)
    assert phase.shape == magnitude.shape and phase.get_data_dtype() == np.float32
    np.testing.assert_allclose(phase.affine, AFFINE)
    assert np.all(np.abs(np.asarray(phase.dataobj)) <= np.pi + 1e-6)
    assert len(params["complex"]) == params["samples"] == FAST["num_samples"]
    for path in params["complex"]:
        z = np.asarray(nib.load(path).dataobj)
        assert np.iscomplexobj(z) and z.shape == magnitude.shape
        np.testing.assert_allclose(np.abs(z), magnitude, rtol=1e-6, atol=1e-6)  # the magnitude is kept exactly
    np.testing.assert_allclose(np.angle(np.asarray(nib.load(params["complex"][0]).dataobj)), np.asarray(phase.dataobj),
                               atol=1e-6)
    spread = np.asarray(nib.load(params["phase_spread"]).dataobj)
    assert spread.shape == magnitude.shape and 0 <= spread.min() and spread.max() <= 1 + 1e-6


@pytest.mark.parametrize("shape", [(48, 40), (48, 40, 3)], ids=["2d", "3d"])
def test_task_returns_phase_complex_and_spread(tmp_path, shape):
    magnitude = head(*shape[:2]) * 100
    if len(shape) == 3:
        magnitude = np.stack([magnitude * (1 + 0.1 * k) for k in range(shape[2])], axis=-1)
    task = PhaseSynthesisTask(output_root=tmp_path)
    assert task.is_valid() and task.info()["type"] == "others" and task.info()["labels"] == []
    result, params = task({"image": str(_nifti(tmp_path / "t1.nii.gz", magnitude)), "device": "cpu", **FAST})
    _check(result, params, magnitude)


def test_task_same_seed_same_phase(tmp_path):
    image = str(_nifti(tmp_path / "t1.nii.gz", head(32, 32) * 50))
    task = PhaseSynthesisTask(output_root=tmp_path)
    a, _ = task({"image": image, **FAST})
    b, _ = task({"image": image, **FAST})
    c, _ = task({"image": image, **FAST, "seed": 1})
    assert np.array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
    assert not np.array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(c).dataobj))


def test_task_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti"))
    task = PhaseSynthesisTask(output_root=tmp_path)
    with pytest.raises(ValueError) as err:
        task({"image": str(bad), **FAST})
    assert "\n" not in str(err.value) and str(err.value)
    with pytest.raises(ValueError, match="no such file"):
        task({"image": str(tmp_path / "missing.nii.gz"), **FAST})
    assert not PhaseSynthesisTask(ckpt_path=tmp_path / "none.pt").is_valid()


def test_app_folder_serves_the_task(tmp_path):
    from scripts.label.compat import alias_pydicom_uids

    alias_pydicom_uids()
    try:
        from monailabel.interfaces.app import MONAILabelApp
        from monailabel.utils.others.class_utils import get_class_of_subclass_from_file
    except ImportError as e:  # the server stack is optional
        pytest.skip(f"MONAI Label's server stack is not installed ({e}); see requirements-monailabel.txt")
    studies = tmp_path / "studies"
    studies.mkdir()
    magnitude = np.stack([head(40, 40) * 80] * 2, axis=-1)
    _nifti(studies / "case1.nii.gz", magnitude)
    app_dir = ROOT / "bundles" / "monailabel_app"
    app_class = get_class_of_subclass_from_file("main", str(app_dir / "main.py"), "MONAILabelApp")
    app = app_class(app_dir=str(app_dir), studies=str(studies), conf={"num_samples": "2", "num_inference_steps": "2"})
    assert isinstance(app, MONAILabelApp) and app.info()["models"]["phase_synthesis"]["type"] == "others"
    result = app.infer({"model": "phase_synthesis", "image": "case1"})
    _check(result["file"], result["params"], magnitude)
