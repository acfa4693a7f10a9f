"""The issue "Archive-grade robustness", end to end: ONE archive folder holding good inputs of every format beside
more than 40 bad ones (every case the issue lists), run through the command line of ``synthesize`` and ``inference``.

Each run exits 0, writes every good input's output, reports every bad input exactly once with a one-line reason that
names its cause, prints no traceback and never shows the patient-named folder. A missing or mismatched phase model
ends ``inference`` with one line naming the file and the fix."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, MRImageStorage, generate_uid

from archive_helpers import PHI, PHI_FOLDER, TINY_NET, assert_no_phi, bundle_cli, head, keys, pydicom_file, tiny_checkpoint
from conftest import python_path
from scripts.io.fastmri_h5 import write_fastmri

FORMATS = {"nii": ".nii", "nii.gz": ".nii.gz", "png": ".png", "tif": ".tif", "dcm": ".dcm", "h5": ".h5", "noext": ""}
# what a reason must name for random bytes of each format (the reader that refused it)
READER = {"nii": "nifti", "nii.gz": "nifti", "png": "png", "tif": "tiff", "dcm": "dicom", "h5": "hdf5", "noext": "dicom"}
NEAR_EMPTY = "near_empty.png"  # synthesize refuses it (no signal); inference writes it with phase zero
LOCKED = "locked"  # an unreadable sub-folder (root reads everything: emulated, see _lock)
LOOP = "bad/loop"  # a symbolic link to the archive root
SITE = '''import os
_locked, _scandir = os.environ.get("TEST_LOCKED_FOLDER"), os.scandir


def _refusing(path="."):
    if _locked and os.fspath(path) == _locked:
        raise PermissionError(13, "Permission denied", _locked)
    return _scandir(path)


os.scandir = _refusing
'''


# ------------------------------------------------------------------------------ builders
def _dicom(slices: np.ndarray, *, series: str | None = None, syntax=ExplicitVRLittleEndian, modality: str = "MR",
           image_type=("ORIGINAL", "PRIMARY", "M"), pixels: bool = True) -> list[Dataset]:
    """One MR series of ``(n, H, W)`` uint16 slices (geometry, a patient name that must never leak)."""
    series = series or generate_uid()
    out = []
    for i, s in enumerate(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = MRImageStorage, generate_uid(), series
        ds.StudyInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = f"{PHI}^JOHN", PHI, "19710203"
        ds.Modality, ds.ImageType, ds.InstanceNumber = modality, list(image_type), i + 1
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 2.0 * i]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 2
        ds.Rows, ds.Columns = s.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if pixels:
            ds.PixelData = s.astype(np.uint16).tobytes()
        out.append(ds)
    return out


def _save_dicom(ds: Dataset, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


def _compressed(path: Path, syntax, frame: bytes) -> None:
    """A DICOM whose header announces ``syntax`` and whose one fragment is ``frame`` (garbage for its decoder)."""
    ds = _dicom(np.zeros((1, 32, 32)), syntax=syntax, pixels=False)[0]
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    _save_dicom(ds, path)


def _nifti(data: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def _valid(fmt: str, path: Path) -> None:
    """A valid file of ``fmt`` big enough that cutting it at half cuts its pixel data."""
    image = (head(64, 64) * 150 + np.random.default_rng(0).uniform(0, 50, (64, 64))).astype(np.float32)
    if fmt in ("nii", "nii.gz"):
        _nifti(np.stack([image] * 4, axis=-1), path)
    elif fmt == "png":
        Image.fromarray(image.astype(np.uint8)).save(path)
    elif fmt == "tif":
        tifffile.imwrite(path, np.stack([image] * 4).astype(np.uint16), photometric="minisblack")
    elif fmt in ("dcm", "noext"):
        _save_dicom(_dicom(image[None])[0], path)
    else:
        kspace = np.fft.fftshift(np.fft.fft2(np.stack([image, image])[:, None] * np.ones((1, 2, 1, 1))), axes=(-2, -1))
        write_fastmri(path, kspace.astype(np.complex64))


def make_bad_archive(root: Path) -> tuple[list[str], dict[str, str]]:
    """``(good names, {bad name: what its reason must name})`` of a fresh archive at ``root`` (names relative to it).

    The near-empty image and the unreadable folder are not listed (each workflow treats the first its own way; the
    second depends on the test's emulation)."""
    rng = np.random.default_rng(0)
    good_dir, bad_dir, phi_dir = root / "good", root / "bad", root / PHI_FOLDER
    for d in (good_dir, bad_dir, phi_dir, root / LOCKED, good_dir / "series"):
        d.mkdir(parents=True, exist_ok=True)
    slices = np.stack([head(32, 32) * (300 + 20 * s) for s in range(3)]).astype(np.float32)
    _nifti(np.moveaxis(slices[:2], 0, -1), good_dir / "vol.nii.gz")
    Image.fromarray((slices[0] / 3).astype(np.uint8)).save(good_dir / "slice.png")
    tifffile.imwrite(good_dir / "slice.tif", slices[1].astype(np.uint16))
    for i, ds in enumerate(_dicom(slices)):  # a series folder (no suffixes: scanners write IM0001 ...)
        _save_dicom(ds, good_dir / "series" / f"IM{i + 1:04d}")
    kspace = np.fft.fft2(slices[:2, None] * np.exp(1j * np.linspace(0, 1, 32)) * np.ones((1, 2, 1, 1)))
    write_fastmri(good_dir / "kspace.h5", np.fft.fftshift(kspace, axes=(-2, -1)).astype(np.complex64))
    good = ["good/vol.nii.gz", "good/slice.png", "good/slice.tif", "good/series", "good/kspace.h5"]
    Image.fromarray((slices[0] / 3).astype(np.uint8)).save(root / LOCKED / "unseen.png")

    near_empty = np.zeros((32, 32), np.uint8)
    near_empty[10, 10:13] = 200  # 3 pixels: the 99.5th percentile is 0
    Image.fromarray(near_empty).save(root / NEAR_EMPTY)

    bad: dict[str, str] = {}
    garbage = rng.bytes(4096)
    for fmt, suffix in FORMATS.items():  # every format: empty, random bytes, cut at half
        (bad_dir / f"empty{suffix or '_noext'}").write_bytes(b"")
        (bad_dir / f"random{suffix or '_noext'}").write_bytes(garbage)
        whole = bad_dir / f"whole{suffix or '_noext'}"
        _valid(fmt, whole)
        blob = whole.read_bytes()
        whole.unlink()
        (bad_dir / f"half{suffix or '_noext'}").write_bytes(blob[: len(blob) // 2])
        bad |= {f"bad/empty{suffix or '_noext'}": "empty", f"bad/random{suffix or '_noext'}": READER[fmt],
                f"bad/half{suffix or '_noext'}": "truncated"}

    _nifti(np.zeros((64, 64, 0), np.float32), bad_dir / "zero_length.nii.gz")
    rgb = np.zeros((32, 32, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"] = 100, 50
    _nifti(rgb, bad_dir / "rgb24_colour.nii.gz")
    nan = np.ones((32, 32, 2), np.float32)
    nan[3, 3, 1] = np.nan
    _nifti(nan, bad_dir / "nan.nii.gz")
    _nifti(np.where(nan == nan, nan, np.inf).astype(np.float32), bad_dir / "inf.nii")
    tifffile.imwrite(bad_dir / "nan.tif", nan[..., 1])
    _nifti(np.zeros((32, 32, 3), np.float32), bad_dir / "all_zero.nii.gz")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(bad_dir / "all_zero.png")
    _nifti(np.stack([head(32, 32) - 0.5] * 2, axis=-1).astype(np.float32), bad_dir / "signed.nii.gz")
    _nifti(np.ones((32, 32, 2, 2, 2), np.float32), bad_dir / "five_d.nii.gz")
    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(bad_dir / "tiny.png")
    colour = np.stack([head(32, 32) * 200, head(32, 32) * 100, head(32, 32) * 50], axis=-1).astype(np.uint8)
    Image.fromarray(colour).save(bad_dir / "colour.png")
    alpha = np.concatenate([colour[..., :1]] * 3 + [np.full((32, 32, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(alpha, "RGBA").save(bad_dir / "transparent.png")
    bad |= {"bad/zero_length.nii.gz": "zero-length dimension", "bad/rgb24_colour.nii.gz": "colour",
            "bad/nan.nii.gz": "nan", "bad/inf.nii": "inf", "bad/nan.tif": "nan", "bad/all_zero.nii.gz": "all zero",
            "bad/all_zero.png": "all zero", "bad/signed.nii.gz": "signed", "bad/five_d.nii.gz": "dimensions",
            "bad/tiny.png": "smaller than", "bad/colour.png": "colour", "bad/transparent.png": "transparent"}

    with open(pydicom_file("MR_small.dcm"), "rb") as f:
        (bad_dir / "cut_200_bytes.dcm").write_bytes(f.read(200))
    _compressed(bad_dir / "jpeg_ls.dcm", JPEGLSLossless, rng.bytes(300))
    _compressed(bad_dir / "jpeg2000.dcm", JPEG2000Lossless, b"\xff\x4f\xff\x51" + bytes(100))
    _save_dicom(_dicom(slices[:1], pixels=False)[0], bad_dir / "no_pixels.dcm")
    _save_dicom(_dicom(slices[:1], modality="CT")[0], bad_dir / "ct.dcm")
    _save_dicom(_dicom(slices[:1], image_type=("ORIGINAL", "PRIMARY", "P"))[0], bad_dir / "phase.dcm")
    bad |= {"bad/cut_200_bytes.dcm": "truncated", "bad/jpeg_ls.dcm": "jpeg-ls", "bad/jpeg2000.dcm": "jpeg 2000",
            "bad/no_pixels.dcm": "no pixel data", "bad/ct.dcm": "not mr", "bad/phase.dcm": "phase"}

    with h5py.File(bad_dir / "no_kspace.h5", "w") as f:
        f.create_dataset("reconstruction_rss", data=slices[:2])
    with h5py.File(bad_dir / "undersampled.h5", "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64))
        f.create_dataset("mask", data=(np.arange(32) % 4 == 0).astype(np.float32))
    bad |= {"bad/no_kspace.h5": "kspace", "bad/undersampled.h5": "undersampled"}

    (phi_dir / f"{PHI}.png").write_bytes(garbage)
    (phi_dir / f"{PHI}.nii.gz").write_bytes(b"")
    _compressed(phi_dir / f"{PHI}_1.dcm", JPEGLSLossless, rng.bytes(300))
    bad |= {f"{PHI_FOLDER}/{PHI}.png": "png", f"{PHI_FOLDER}/{PHI}.nii.gz": "empty", f"{PHI_FOLDER}/{PHI}_1.dcm": "jpeg-ls"}

    raw = os.path.join(os.fsencode(bad_dir), b"random\xff\xfe.nii.gz")  # names that are not UTF-8
    try:
        with open(raw, "wb") as f:
            f.write(garbage)
        bad[os.path.relpath(os.fsdecode(raw), root)] = "nifti"
        Image.fromarray((slices[2] / 3).astype(np.uint8)).save(os.fsdecode(os.path.join(os.fsencode(good_dir), b"\xe9t\xe9.png")))
        good.append(os.path.relpath(os.fsdecode(os.path.join(os.fsencode(good_dir), b"\xe9t\xe9.png")), root))
    except (OSError, ValueError):
        pass  # the filesystem refuses non-UTF-8 names: those cases are not built
    try:
        os.symlink(root, root / LOOP)
        bad[LOOP] = "symbolic link loop"
    except (OSError, NotImplementedError):
        pass
    return good, bad


def _lock(root: Path) -> dict[str, str]:
    """Make ``root/LOCKED`` unreadable for the CLI; returns the environment for :func:`bundle_cli`.

    As root, permissions refuse nothing: a ``sitecustomize`` in the subprocess makes listing that folder fail
    as ``chmod 0`` does (the emulation of ``test_archive_inputs``)."""
    locked = root / LOCKED
    if getattr(os, "geteuid", lambda: 1)() != 0:
        locked.chmod(0)
        return {}
    site = root.parent / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITE)
    return {"TEST_LOCKED_FOLDER": str(locked), "PYTHONPATH": os.pathsep.join([str(site), python_path()])}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """``(root, good names, {bad name: cause}, CLI environment)`` of one archive holding every case."""
    root = tmp_path_factory.mktemp("bad_archive") / "archive"
    good, bad = make_bad_archive(root)
    env = _lock(root)
    bad[LOCKED] = "permission denied"
    assert len(bad) >= 40
    yield root, good, bad, env
    (root / LOCKED).chmod(0o755)


def _console(proc) -> str:
    return proc.stdout + proc.stderr


def assert_reported(archive: Path, skipped: list[dict], bad: dict[str, str], console: str) -> dict[str, str]:
    """Every bad input is reported exactly once, as one line naming its cause, and logged as ``<key>: <reason>``;
    returns ``{name: reason}``."""
    expected = keys(archive, bad)
    reported = [s["input"] for s in skipped]
    assert sorted(reported) == sorted(expected), ({expected.get(k, k) for k in set(reported) ^ set(expected)})
    reasons = {expected[s["input"]]: s["reason"] for s in skipped}
    wrong = {n: r for n, r in reasons.items() if not r or "\n" in r or bad[n] not in r.lower()}
    assert not wrong, wrong
    lines = console.splitlines()
    for key, name in expected.items():  # one console line each, ``<key>: <reason>``
        assert [line.endswith(f"{key}: {reasons[name]}") for line in lines if key in line] == [True], (name, key)
    stray = [line for line in lines if re.search(r" - (WARNING|ERROR|CRITICAL) - ", line)
             and not re.search(r" - WARNING - [0-9a-f]{16}: ", line)]
    assert not stray, stray  # no second line about an input (a library's own log record)
    return reasons


def assert_clean_console(proc, *folders: Path) -> None:
    """Exit 0, no traceback, and no patient name in the console or any file of ``folders``."""
    console = _console(proc)
    assert proc.returncode == 0, console[-3000:]
    assert "Traceback" not in console, console[-3000:]
    assert_no_phi(folders, proc.stdout, proc.stderr)


# ------------------------------------------------------------------------------ the two workflows
def test_synthesize_cli_on_a_bad_archive(archive, tmp_path):
    root, good, bad, env = archive
    out = tmp_path / "kspace"
    proc = bundle_cli("synthesize", "synthesize.json", ["--input_dir", root, "--output_dir", out, "--image_size", 32,
                                                        "--num_coils", 2, "--phase_source", "zero"], env=env)
    report = Path(f"{out}_report")
    assert_clean_console(proc, out, report)
    manifest = [json.loads(line) for line in (report / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["input_key"] for r in manifest) == sorted(keys(root, good))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{r['input_key']}_s0.h5" for r in manifest)
    skipped = json.loads((report / "skipped.json").read_text())
    assert_reported(root, skipped, {**bad, NEAR_EMPTY: "no signal"}, _console(proc))


def test_inference_cli_on_a_bad_archive(archive, tmp_path):
    root, good, bad, env = archive
    out = tmp_path / "phase"
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    proc = bundle_cli("inference", "inference.json", ["--input_dir", root, "--output_dir", out, "--ckpt_path", ckpt,
                                                      *_tiny_args()], env=env)
    assert_clean_console(proc, out)
    report = json.loads((out / "report.json").read_text())
    written = {w["input"]: w for w in report["written"]}
    assert sorted(written) == sorted(keys(root, good + [NEAR_EMPTY]))
    for w in written.values():
        assert (out / f"{w['id']}_sample0.nii.gz").is_file()
    assert_reported(root, report["skipped"], bad, _console(proc))


# ------------------------------------------------------------------------------ the phase model
@pytest.mark.parametrize("case", ["missing", "mismatched"])
def test_inference_without_a_usable_phase_model_ends_with_one_line(tmp_path, case):
    """No traceback (MONAI's CheckpointLoader printed 86 lines): one line naming the file and the fix, before any
    input is read."""
    (tmp_path / "in").mkdir()
    Image.fromarray((head(32, 32) * 150).astype(np.uint8)).save(tmp_path / "in" / "a.png")
    ckpt = tmp_path / "model.pt"
    if case == "mismatched":
        tiny_checkpoint(ckpt)  # made with unet_channels [8, 16]: the run asks for [16, 32]
    out = tmp_path / "out"
    proc = bundle_cli("inference", "inference.json", ["--input_dir", tmp_path / "in", "--output_dir", out, "--ckpt_path",
                                                      ckpt, *_tiny_args(unet_channels=[16, 32])])
    console = _console(proc)
    assert proc.returncode == 1 and "Traceback" not in console and " - ERROR - " not in console, console[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    if case == "missing":
        assert line == (f"inference: no phase model at {ckpt}: train one with "
                        "`python -m monai.bundle run training --config_file configs/train.json` or pass --ckpt_path")
    else:
        assert line.startswith(f"inference: phase model {ckpt} does not fit the configured network: ")
        assert "(e.g. conv_in.conv.weight: file [8, 3, 3, 3], network [16, 3, 3, 3])" in line
        assert "pass the settings it was made with: --unet_channels '[8,16]' --unet_attention_levels '[false,true]'" in line
    assert console.count(line) == 1 and not out.exists()  # nothing read, nothing written


def _tiny_args(**net) -> list:
    """The tiny network and a two-step, one-sample sampler as command-line overrides."""
    net = {**TINY_NET, **net}
    return ["--num_inference_steps", 2, "--num_samples", 1, "--image_size", net["image_size"],
            "--unet_channels", json.dumps(net["unet_channels"]), "--unet_num_head_channels", net["unet_num_head_channels"],
            "--unet_attention_levels", json.dumps(net["unet_attention_levels"])]
