"""fastMRI h5 writer/reader: layout, RSS consistency, atomic writes, bad files, no PHI."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
import sigpy

from scripts.io.fastmri_h5 import FastMRIFileError, num_slices, read_fastmri, read_slice, rss, write_fastmri


def _kspace(shape=(3, 4, 32, 24), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def test_multicoil_layout_and_rss(tmp_path):
    kspace = _kspace()
    path = write_fastmri(tmp_path / "vol.h5", kspace, acquisition="AXT2", patient_id="Jane^Doe-12345")
    data = read_fastmri(path)  # MONAI FastMRIReader
    assert data["kspace"].dtype == np.complex64 and data["kspace"].shape == (3, 4, 32, 24)
    np.testing.assert_array_equal(data["kspace"], kspace)
    expected = np.sqrt((np.abs(sigpy.ifft(kspace, axes=(-2, -1), center=True)) ** 2).sum(1))
    np.testing.assert_allclose(data["reconstruction_rss"], expected, rtol=1e-5)
    assert data["acquisition"] == "AXT2"
    assert data["max"] == pytest.approx(expected.max(), rel=1e-5)
    assert data["norm"] == pytest.approx(np.linalg.norm(expected), rel=1e-5)
    assert "Jane" not in data["patient_id"] and len(data["patient_id"]) == 16
    header = data["ismrmrd_header"].decode()
    assert "<matrixSize><x>32</x><y>24</y>" in header and "<receiverChannels>4<" in header
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_single_coil_and_slice_reads(tmp_path):
    kspace = _kspace((2, 16, 16))
    path = write_fastmri(tmp_path / "sc.h5", kspace, extra={"image_complex": np.ones((2, 16, 16), np.complex64)})
    assert num_slices(path) == 2
    one = read_slice(path, 1, ("kspace", "image_complex", "missing"))
    assert set(one) == {"kspace", "image_complex"} and one["kspace"].shape == (16, 16)
    with h5py.File(path) as f:
        assert "reconstruction_esc" in f


def test_same_input_same_bytes(tmp_path):
    a = write_fastmri(tmp_path / "a.h5", _kspace())
    b = write_fastmri(tmp_path / "b.h5", _kspace())
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)]
    assert digest[0] == digest[1]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_fastmri(tmp_path / "x.h5", _kspace(), attrs={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def _h5_with(path, key, value):
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=value)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b"not hdf5 at all"), "not a readable HDF5 file"),
        (lambda p: _h5_with(p, "reconstruction_rss", np.zeros((1, 4, 4))), "no 'kspace'"),
        (lambda p: _h5_with(p, "kspace", np.zeros((4, 4))), "must be complex"),
    ],
)
def test_bad_files_name_file_and_reason(tmp_path, make, reason):
    path = tmp_path / "bad.h5"
    make(path)
    with pytest.raises(FastMRIFileError) as err:
        num_slices(path)
    msg = str(err.value)
    assert str(path) in msg and reason in msg and "\n" not in msg


def test_truncated_file(tmp_path):
    path = write_fastmri(tmp_path / "t.h5", _kspace())
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(FastMRIFileError, match="t.h5"):
        read_fastmri(path)


def test_rss_matches_definition():
    kspace = _kspace((4, 8, 8))
    images = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(rss(kspace, coil_axis=0), np.sqrt((np.abs(images) ** 2).sum(0)), rtol=1e-5)
