"""Archive-grade inputs: one-line reasons for odd files, odd file names, folder walks, bounded memory."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLSLossless

from archive_helpers import pydicom_file
from conftest import ROOT, python_path
from scripts.io.fastmri_h5 import anonymous_id
from scripts.io.magnitude import MagnitudeInputError, find_inputs, load_magnitude
from scripts.synthesis.synthesize import input_key


def reason_of(path) -> str:
    """The reason of the one-line error that loading ``path`` raises."""
    with pytest.raises(MagnitudeInputError) as info:
        load_magnitude(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    return info.value.reason


# ----------------------------------------------------------------------------- readers


def test_nifti_with_an_empty_dimension(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 0), np.float32), np.eye(4)), tmp_path / "empty.nii.gz")
    assert "zero-length dimension" in reason_of(tmp_path / "empty.nii.gz")


def test_rgb24_nifti_follows_the_grey_rule(tmp_path):
    rgb = np.zeros((16, 16, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    grey = np.arange(16 * 16 * 3).reshape(16, 16, 3) % 200 + 1
    for channel in "RGB":
        rgb[channel] = grey
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "grey.nii.gz")
    np.testing.assert_array_equal(np.asarray(load_magnitude(tmp_path / "grey.nii.gz").magnitude),
                                  np.moveaxis(grey, 2, 0).astype(np.float32))
    rgb["G"] = 0
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "colour.nii.gz")
    assert "colour" in reason_of(tmp_path / "colour.nii.gz")


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_tiff_gives_the_modulus(tmp_path, dtype):
    rng = np.random.default_rng(1)
    z = (rng.uniform(0.5, 1, (16, 16)) * np.exp(1j * rng.uniform(-3, 3, (16, 16)))).astype(dtype)
    tifffile.imwrite(tmp_path / "z.tif", z)
    np.testing.assert_allclose(load_magnitude(tmp_path / "z.tif").magnitude[0], np.abs(z), rtol=1e-6)


def test_truncated_dicom(tmp_path):
    path = tmp_path / "cut.dcm"
    with open(pydicom_file("MR_small.dcm"), "rb") as f:
        path.write_bytes(f.read(200))
    assert "truncated" in reason_of(path)
    assert "truncated DICOM pixel data" in reason_of(pydicom_file("MR_truncated.dcm"))  # cut inside the pixels


def test_jpeg_ls_dicom_names_the_missing_decoder(tmp_path):
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed")
    reason = reason_of(pydicom_file("MR_small_jpeg_ls_lossless.dcm"))
    assert "JPEG-LS" in reason and "no decoder installed" in reason and "pylibjpeg-libjpeg" in reason


def test_undecodable_jpeg2000_dicom_logs_nothing(tmp_path, caplog):
    ds = pydicom.dcmread(pydicom_file("MR_small_jp2klossless.dcm"))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(100)])  # a J2K start, then nothing valid
    ds.save_as(tmp_path / "j2k.dcm")
    with caplog.at_level(logging.DEBUG):
        reason = reason_of(tmp_path / "j2k.dcm")
    assert "JPEG 2000" in reason
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]


def test_non_utf8_file_name(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"vol\xff\xfe.nii.gz")
    try:
        with open(raw, "wb"):
            pass
    except (OSError, ValueError):
        pytest.skip("the filesystem refuses non-UTF-8 names")
    name = os.fsdecode(raw)
    nib.save(nib.Nifti1Image(np.ones((16, 16, 2), np.float32), np.eye(4)), name)
    assert find_inputs(tmp_path) == [name]
    volume = load_magnitude(name, root=tmp_path)
    assert volume.magnitude.shape == (2, 16, 16) and volume.id
    assert anonymous_id(name) == hashlib.sha256(raw).hexdigest()[:16]  # the name's bytes, as on disk
    assert input_key(name, tmp_path) != input_key(os.fsdecode(raw[:-1]), tmp_path)


def test_empty_and_cut_files_name_the_cause(tmp_path):
    image = np.arange(64 * 64 * 4, dtype=np.float32).reshape(64, 64, 4) % 97 + 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "v.nii")
    tifffile.imwrite(tmp_path / "v.tif", np.moveaxis(image, 2, 0).astype(np.uint16), photometric="minisblack")
    Image.fromarray(np.random.default_rng(0).integers(1, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "v.png")
    for name in ("v.nii", "v.tif", "v.png"):
        blob = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(blob[: len(blob) // 2])
        (tmp_path / f"empty_{name}").write_bytes(b"")
        assert reason_of(tmp_path / f"empty_{name}") == "empty file (0 bytes)"
        assert reason_of(tmp_path / f"cut_{name}").startswith("truncated"), name
    assert reason_of(tmp_path / "cut_v.nii") == "truncated NIfTI file (32944 of 65888 bytes)"


def test_suffixless_files_that_are_not_dicom_are_reported(tmp_path):
    """DICOM files often have no suffix (IM0001) or a UID as name: one without the DICM preamble is listed (and
    refused with a reason) rather than silently left out; other unknown suffixes are not inputs."""
    (tmp_path / "IM0001").write_bytes(b"")
    (tmp_path / "1.2.840.113619.2.55").write_bytes(b"junk" * 100)
    (tmp_path / "notes.txt").write_text("not an input")
    assert find_inputs(tmp_path) == [str(tmp_path / "1.2.840.113619.2.55"), str(tmp_path / "IM0001")]
    assert reason_of(tmp_path / "IM0001") == "empty file (0 bytes)"
    assert "no 'DICM' preamble" in reason_of(tmp_path / "1.2.840.113619.2.55")
    assert reason_of(tmp_path / "notes.txt") == "unsupported file type"


# ----------------------------------------------------------------------------- discovery


def image(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((16, 16, 1), np.float32), np.eye(4)), path)
    return str(path)


def test_unreadable_folder_is_reported(tmp_path, monkeypatch):
    good = image(tmp_path / "in" / "a" / "v.nii.gz")
    locked = tmp_path / "in" / "locked"
    image(locked / "w.nii.gz")
    if getattr(os, "geteuid", lambda: 1)() == 0:  # root reads everything: make the listing fail instead
        scandir = os.scandir

        def refusing(path="."):
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(locked))
            return scandir(path)

        monkeypatch.setattr(os, "scandir", refusing)
    else:
        locked.chmod(0)
    problems: list = []
    try:
        assert find_inputs(tmp_path / "in", problems=problems) == [good]
    finally:
        locked.chmod(0o755)
    assert problems == [(str(locked), "cannot read folder (Permission denied)")]


def test_symbolic_links_followed_once_and_loops_reported(tmp_path):
    root = tmp_path / "in"
    here = image(root / "real" / "v.nii.gz")
    image(tmp_path / "elsewhere" / "w.nii.gz")
    try:
        os.symlink(tmp_path / "elsewhere", root / "linked")
        os.symlink(tmp_path / "elsewhere", root / "linked_again")
        os.symlink(root, root / "real" / "loop")
        os.symlink(root / "real", root / "alias")
    except (OSError, NotImplementedError):
        pytest.skip("no symbolic links here")
    problems: list = []
    assert find_inputs(root, problems=problems) == [str(root / "linked" / "w.nii.gz"), here]
    assert sorted(problems) == [(str(root / "alias"), "already visited"), (str(root / "linked_again"), "already visited"),
                                (str(root / "real" / "loop"), "symbolic link loop")]
    assert find_inputs(root) == [str(root / "linked" / "w.nii.gz"), here]  # the defaults: same units, no list


def test_exclude_and_missing_root(tmp_path):
    root = tmp_path / "in"
    kept = image(root / "v.nii.gz")
    image(root / "out" / "s0.nii.gz")
    assert find_inputs(root, exclude=[root / "out"]) == [kept]
    assert len(find_inputs(root)) == 2
    assert find_inputs(str(root), [str(tmp_path)]) == []  # the root itself excluded
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_inputs(tmp_path / "absent")


# ----------------------------------------------------------------------------- memory

PEAK = """
import resource, sys, torch
torch.set_num_threads(1)
from scripts.synthesis.synthesize import Synthesizer

def peak():  # this program's own peak: Linux's ru_maxrss keeps the (vfork) parent's peak across exec
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

for folder in sys.argv[1:]:
    Synthesizer(folder + "/in", folder + "/out", phase_source="zero", num_coils=2, image_size=64).run()
    print(peak())
"""


def peak_rss(folders: list) -> list[int]:
    """Peak RSS (bytes) of one fresh process after synthesising each folder's input at 64 x 64, in order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path()}
    out = subprocess.run([sys.executable, "-c", PEAK, *map(str, folders)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(len(list((f / "out").glob("*.h5"))) == 1 for f in folders)
    return [int(v) for v in out.stdout.split()[-len(folders):]]


def test_synthesis_memory_does_not_grow_with_the_input_size(tmp_path):
    """1024 x 1024 x 40 float32 (160 MB unpacked; read whole, it was held several times: +1 GB) costs what
    256 x 256 x 40 does."""
    pytest.importorskip("resource")
    folders = [tmp_path / "256", tmp_path / "1024"]
    for folder in folders:
        size = int(folder.name)
        y, x = np.mgrid[:size, :size] / size
        disk = (((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.16).astype(np.float32)
        (folder / "in").mkdir(parents=True)
        nib.save(nib.Nifti1Image(disk[..., None] * (1 + 0.01 * np.arange(40, dtype=np.float32)), np.eye(4)),
                 folder / "in" / "v.nii.gz")
    small, large = peak_rss(folders)
    assert large / small < 2 and large - small < 80e6, (small, large)  # less than half the unpacked volume
