"""The batch-boundary rule for the reconstruction workflows: ``evaluate`` skips each unusable test file with one
line and a report entry and computes the metrics on the rest; a run that has nothing to evaluate, and
``reconstruct`` on a bad file, end with one line and exit status 1; no input name reaches an output or a log."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from archive_helpers import PHI, assert_no_phi, bundle_cli, captured_log, head, keys
from scripts.coils.simulation import birdcage
from scripts.core.fft import fft2c
from scripts.io.fastmri_h5 import write_fastmri
from scripts.recon.evaluate import SKIPPED, evaluate_varnet, format_summary
from scripts.synthesis.synthesize import NoUsableInput

GOOD = ["a.h5", "b.h5"]
BAD = {  # file -> what its reason must say
    "garbage.h5": "not a readable HDF5 file",
    "empty.h5": "empty file",
    "no_kspace.h5": "no 'kspace' dataset",
    "wrong_dims.h5": "'kspace' must be complex",
    "no_slices.h5": "'kspace' holds no slices",
    "odd.h5": "RuntimeError: simulated l1 failure",  # readable, but a method fails on its slice
    f"{PHI}.h5": "not a readable HDF5 file",
}
EVAL = dict(accelerations=[4], center_fraction=0.125, l1_max_iter=5, n_bootstrap=10)


def kspace(size: int = 32, slices: int = 2, coils: int = 2) -> np.ndarray:
    """Fully sampled ``(slices, coils, size, size)`` k-space of a smooth head."""
    images = np.stack([head(size, size) * (1 + 0.1 * s) for s in range(slices)])
    return fft2c(birdcage(coils, (size, size))[None] * images[:, None]).astype(np.complex64)


def make_test_dir(root: Path, names=(*GOOD, *BAD)) -> Path:
    """Good fastMRI files and bad ones of every kind under ``root``."""
    root.mkdir(parents=True)
    for i, name in enumerate(n for n in names if n in GOOD):
        write_fastmri(root / name, kspace() * (i + 1))
    makers = {
        "garbage.h5": lambda p: p.write_bytes(np.random.default_rng(0).bytes(512)),
        "empty.h5": lambda p: p.write_bytes(b""),
        "no_kspace.h5": lambda p: h5py.File(p, "w").create_dataset("reconstruction_rss", data=np.ones((1, 32, 32))),
        "wrong_dims.h5": lambda p: h5py.File(p, "w").create_dataset("kspace", data=kspace()[0, 0]),
        "no_slices.h5": lambda p: h5py.File(p, "w").create_dataset("kspace", data=kspace()[:0]),
        "odd.h5": lambda p: write_fastmri(p, kspace(24, slices=1)),
        f"{PHI}.h5": lambda p: p.write_bytes(b"not hdf5"),
    }
    for name in names:
        if name in makers:
            makers[name](root / name)
    return root


def assert_reported(root: Path, skipped: list[dict], names, log: str) -> None:
    """Each name reported once by its key with a one-line reason naming the cause, logged as ``<key>: <reason>``."""
    expected = keys(root, names)
    reasons = {s["input"]: s["reason"] for s in skipped}
    assert sorted(reasons) == sorted(expected) and len(skipped) == len(expected)
    for key, reason in reasons.items():
        assert BAD[expected[key]] in reason and "\n" not in reason and f"{key}: {reason}" in log, (expected[key], reason)


def test_evaluate_skips_each_bad_file_and_goes_on(tmp_path, monkeypatch):
    import scripts.recon.evaluate as evaluate

    l1 = evaluate.l1_wavelet_batch

    def failing(kspace, *args, **kwargs):  # a method that fails on one file's slices only
        if kspace.shape[-1] == 24:
            raise RuntimeError("simulated l1 failure")
        return l1(kspace, *args, **kwargs)

    monkeypatch.setattr(evaluate, "l1_wavelet_batch", failing)
    folder, out = make_test_dir(tmp_path / "test_set"), tmp_path / "eval"
    with captured_log() as log:
        result = evaluate_varnet(None, folder, out, **EVAL)
    assert_reported(folder, result["skipped"], BAD, log.getvalue())
    assert json.loads((out / SKIPPED).read_text()) == result["skipped"]
    assert {r["file"] for r in result["volumes"]} == set(GOOD) and len(result["volumes"]) == 2 * len(GOOD)
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert {r["method"] for r in summary} == {"zero_filled", "l1_wavelet"}
    assert all(r["skipped_files"] == str(len(BAD)) and r["volumes"] == "2" for r in summary)
    assert f"{len(BAD)} test file(s) skipped" in format_summary(result["summary"])
    alone = evaluate_varnet(None, [str(folder / n) for n in GOOD], None, **EVAL, methods=["zero_filled"])
    assert alone["slices"] == [r for r in result["slices"] if r["method"] == "zero_filled"]  # the bad files change nothing
    assert alone["skipped"] == [] and "skipped" not in format_summary(alone["summary"])
    assert_no_phi([out], log.getvalue())


def test_evaluate_with_nothing_to_evaluate_fails_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no h5 here")
    cases = {"does not exist": tmp_path / "no_such_folder", "no .h5 test files": tmp_path / "empty", "list of test files is empty": []}
    for message, test_dir in cases.items():
        with pytest.raises(NoUsableInput, match=message) as e:
            evaluate_varnet(None, test_dir, tmp_path / "out", **EVAL)
        assert "\n" not in str(e.value)
    with pytest.raises(NoUsableInput, match=r"all 2 test file\(s\) failed"):
        evaluate_varnet(None, make_test_dir(tmp_path / "bad", ["garbage.h5", f"{PHI}.h5"]), tmp_path / "out", **EVAL)
    assert len(json.loads((tmp_path / "out" / SKIPPED).read_text())) == 2  # the report is written first


def test_evaluate_cli_all_bad_exits_non_zero_with_one_line(tmp_path):
    folder, out = make_test_dir(tmp_path / "test_set", ["empty.h5", "no_kspace.h5", f"{PHI}.h5"]), tmp_path / "eval"
    proc = bundle_cli("evaluate", "evaluate.json", ["--model", "none", "--test_dir", folder, "--output_dir", out,
                                                    "--accelerations", "[4]", "--methods", "['zero_filled']"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"evaluate: all 3 test file(s) failed; the reasons are in {out / SKIPPED}"
    assert_reported(folder, json.loads((out / SKIPPED).read_text()), ["empty.h5", "no_kspace.h5", f"{PHI}.h5"], proc.stdout + proc.stderr)
    assert_no_phi([out], proc.stdout, proc.stderr)


def test_reconstruct_bad_file_is_one_line(tmp_path):
    from test_prior_recon import write_fake_prior

    from scripts.recon.posterior import reconstruct_file

    folder = make_test_dir(tmp_path / "in", ["no_kspace.h5", "wrong_dims.h5", "garbage.h5"])
    prior = write_fake_prior(tmp_path / "prior")
    for name in ("no_kspace.h5", "wrong_dims.h5"):
        with pytest.raises(NoUsableInput) as e:
            reconstruct_file(str(folder / name), str(prior), str(tmp_path / "out"), num_steps=2, num_samples=1)
        assert str(e.value).startswith(f"reconstruct: cannot reconstruct {folder / name}: {BAD[name]}") and "\n" not in str(e.value)
    with pytest.raises(NoUsableInput, match="does not exist"):
        reconstruct_file(str(folder / "missing.h5"), str(prior), str(tmp_path / "out"))
    proc = bundle_cli("reconstruct", "reconstruct.json", ["--kspace", folder / "garbage.h5", "--prior", prior,
                                                          "--output_dir", tmp_path / "out", "--num_steps", 2], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"reconstruct: cannot reconstruct {re.escape(str(folder / 'garbage.h5'))}: not a readable HDF5 file .*", last)
    assert not (tmp_path / "out").exists()
