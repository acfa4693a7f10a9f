"""Magnitude-only input readers: every format, bad input, privacy and the MONAI transform (tiny files in tmp_path)."""

from __future__ import annotations

import logging
import os
import random
import shutil

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from scripts.io.fastmri_h5 import rss, write_fastmri
from scripts.io.magnitude import (
    BadInput,
    LoadMagnituded,
    MagnitudeInputError,
    MagnitudeVolume,
    find_inputs,
    input_key,
    iter_magnitude_volumes,
    load_magnitude,
    slices_to_volume,
)

RNG = np.random.default_rng(0)
PHI = {
    "PatientName": "Zyxwvut^Quorra",
    "PatientID": "PID-8675309-XQ",
    "PatientBirthDate": "19230417",
    "InstitutionName": "Klinikum Obskura Nord",
    "AccessionNumber": "ACC77X55Z",
    "StudyDate": "20010911",
}


def pixels(shape=(16, 20), high=4000) -> np.ndarray:
    return RNG.integers(1, high, size=shape, dtype=np.uint16)


def write_dicom(path, data, *, series_uid, instance=1, position=(0.0, 0.0, 0.0), orientation=(1, 0, 0, 0, 1, 0),
                spacing=(0.5, 0.7), slope=None, intercept=None, modality="MR", phi=None, **extra) -> str:
    """A minimal part-10 MR image; ``data`` is ``(rows, cols)`` uint16, or ``(rows, cols, 3)`` uint8 for colour."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = modality, series_uid, instance
    if position is not None:
        ds.ImagePositionPatient, ds.ImageOrientationPatient = list(position), list(orientation)
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = data.shape[:2]
    colour = data.ndim == 3
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8 if colour else 16
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    for key, value in {**(phi or {}), **extra}.items():
        setattr(ds, key, value)
    ds.PixelData = data.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def write_series(folder, n=4, shape=(16, 20), uid=None, names=None, geometry=True, **kw) -> tuple[list[str], np.ndarray]:
    """``n`` axial slices 2 mm apart written in shuffled order under random names; returns files and (n, rows, cols)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    stack = np.stack([pixels(shape) for _ in range(n)])
    order = list(range(n))
    random.Random(n).shuffle(order)
    files = []
    for rank, k in enumerate(order):
        name = names[rank] if names else f"im{RNG.integers(1e6):06d}_{rank}"
        position = (-5.0, 3.0, 2.0 * k) if geometry else None
        files.append(write_dicom(folder / name, stack[k], series_uid=uid, instance=k + 1, position=position, **kw))
    return files, stack


# ----------------------------------------------------------------------------- DICOM


def test_single_dicom_rescale_and_affine(tmp_path):
    from monai.data import PydicomReader

    raw = pixels()
    path = write_dicom(tmp_path / "a.dcm", raw, series_uid=generate_uid(), position=(10, 20, 30), slope=2.5, intercept=10)
    vol = load_magnitude(path)
    assert vol.kind == "dicom" and vol.magnitude.dtype == np.float32 and vol.magnitude.shape == (1, 16, 20)
    np.testing.assert_array_equal(vol.magnitude[0], (raw * 2.5 + 10).astype(np.float32))
    reader = PydicomReader(swap_ij=False)  # MONAI's in-plane geometry for the same (row, col) order
    _, meta = reader.get_data(reader.read(path))
    np.testing.assert_allclose(vol.affine[:, [0, 1, 3]], np.asarray(meta["affine"])[:, [0, 1, 3]])
    assert np.linalg.det(vol.affine[:3, :3]) != 0 and vol.slice_axis == 2
    assert find_inputs(tmp_path) == [path]


def test_series_folder_sorted_by_position(tmp_path):
    files, stack = write_series(tmp_path / "ser", n=8)  # extension-less names: found by the DICM preamble
    assert find_inputs(tmp_path) == [str(tmp_path / "ser")]
    vol = load_magnitude(tmp_path / "ser")
    np.testing.assert_array_equal(vol.magnitude, stack.astype(np.float32))
    np.testing.assert_allclose(vol.affine[:3, 2], [0, 0, 2.0])  # slice step from first/last position
    np.testing.assert_allclose(vol.affine[:3, 3], [5.0, -3.0, 0.0])  # LPS (-5, 3, 0) -> RAS
    assert load_magnitude(files).id == vol.id  # a file list is the same series
    coronal = load_magnitude(tmp_path / "ser", slice_axis=0)  # reformat along the rows: (cols, slices) slices
    np.testing.assert_array_equal(coronal.magnitude, np.moveaxis(stack, 0, 2).astype(np.float32))
    np.testing.assert_array_equal(slices_to_volume(coronal, coronal.magnitude), slices_to_volume(vol, vol.magnitude))


def test_two_series_in_one_folder_are_split(tmp_path):
    folder = tmp_path / "mixed"
    _, a = write_series(folder, n=3, names=["a1", "a2", "a3"])
    _, b = write_series(folder, n=2, names=["b1", "b2"], shape=(20, 16))
    units = find_inputs(tmp_path)
    assert len(units) == 2 and all("#series-" in u for u in units)
    loaded = sorted((load_magnitude(u) for u in units), key=lambda v: v.magnitude.shape[0])
    np.testing.assert_array_equal(loaded[0].magnitude, b.astype(np.float32))
    np.testing.assert_array_equal(loaded[1].magnitude, a.astype(np.float32))
    assert loaded[0].id != loaded[1].id
    with pytest.raises(MagnitudeInputError, match="found 2"):
        load_magnitude(folder)


def test_series_with_repeated_positions_is_4d_and_without_geometry_uses_instance_number(tmp_path):
    uid, echoes = generate_uid(), {}
    (tmp_path / "me").mkdir()
    for k, e in random.Random(1).sample([(k, e) for k in range(3) for e in range(2)], 6):
        echoes[k, e] = pixels()
        write_dicom(tmp_path / "me" / f"f{k}{e}", echoes[k, e], series_uid=uid, instance=2 * k + e + 1,
                    position=(0, 0, 1.5 * k))
    vol = load_magnitude(tmp_path / "me")  # 3 positions x 2 echoes: echo-major slices, frames == 2
    assert vol.frames == 2 and vol.magnitude.shape == (6, 16, 20)
    expected = np.stack([echoes[k, e] for e in range(2) for k in range(3)]).astype(np.float32)
    np.testing.assert_array_equal(vol.magnitude, expected)
    files, stack = write_series(tmp_path / "nogeo", n=3, geometry=False)
    np.testing.assert_array_equal(load_magnitude(tmp_path / "nogeo").magnitude, stack.astype(np.float32))


def test_enhanced_multiframe_per_frame_rescale(tmp_path):
    n, raw = 4, np.stack([pixels() for _ in range(4)])
    order = [2, 0, 3, 1]  # frames stored out of position order
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedMRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.NumberOfFrames = "MR", generate_uid(), n
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 20, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [1.0, 1.0]
    shared.PixelMeasuresSequence[0].SliceThickness = 3.0
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in order:
        item = Dataset()
        item.PlanePositionSequence = [Dataset()]
        item.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        item.PixelValueTransformationSequence = [Dataset()]
        item.PixelValueTransformationSequence[0].RescaleSlope = k + 1
        item.PixelValueTransformationSequence[0].RescaleIntercept = 0
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = raw[order].tobytes()
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    vol = load_magnitude(path)
    expected = np.stack([raw[k].astype(np.float64) * (k + 1) for k in range(n)]).astype(np.float32)
    np.testing.assert_array_equal(vol.magnitude, expected)
    np.testing.assert_allclose(vol.affine[:3, 2], [0, 0, 3.0])


# ----------------------------------------------------------------------------- NIfTI / PNG / TIFF / fastMRI


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize("shape", [(16, 18, 12), (16, 18, 12, 2)])
def test_nifti_3d_4d_slice_axis(tmp_path, shape, slice_axis):
    data = RNG.integers(1, 3000, size=shape).astype(np.int16)
    affine = np.diag([0.9, 1.1, 2.0, 1.0])
    affine[:3, 3] = [-5, 7, 11]
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    vol = load_magnitude(tmp_path / "v.nii.gz", slice_axis=slice_axis)
    frames = data.shape[3] if data.ndim == 4 else 1
    per_volume = [np.moveaxis(data[..., t] if frames > 1 else data, slice_axis, 0) for t in range(frames)]
    np.testing.assert_array_equal(vol.magnitude, np.concatenate(per_volume).astype(np.float32))
    assert (vol.kind, vol.slice_axis, vol.frames) == ("nifti", slice_axis, frames)
    np.testing.assert_allclose(vol.affine, affine)
    np.testing.assert_array_equal(slices_to_volume(vol, vol.magnitude), data)


def test_nifti_2d(tmp_path):
    data = RNG.random((16, 18)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "s.nii")
    vol = load_magnitude(tmp_path / "s.nii", slice_axis=0)
    assert vol.magnitude.shape == (1, 16, 18) and vol.slice_axis == 2
    np.testing.assert_array_equal(vol.magnitude[0], data)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_8_and_16_bit(tmp_path, dtype):
    data = RNG.integers(1, np.iinfo(dtype).max, size=(16, 24)).astype(dtype)
    Image.fromarray(data).save(tmp_path / "x.png")
    vol = load_magnitude(tmp_path / "x.png")
    assert vol.kind == "png" and vol.magnitude.shape == (1, 16, 24)
    np.testing.assert_array_equal(vol.magnitude[0], data.astype(np.float32))
    np.testing.assert_array_equal(vol.affine, np.eye(4))


def test_grey_rgb_png_is_accepted(tmp_path):
    grey = RNG.integers(1, 255, size=(16, 16), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_magnitude(tmp_path / "g.png").magnitude[0], grey.astype(np.float32))


def test_tiff_2d_and_stack(tmp_path):
    single, stack = pixels((16, 20)), np.stack([pixels((16, 20)) for _ in range(3)])
    tifffile.imwrite(tmp_path / "a.tif", single)
    tifffile.imwrite(tmp_path / "b.tiff", stack, photometric="minisblack")  # 3 pages, not planar RGB
    np.testing.assert_array_equal(load_magnitude(tmp_path / "a.tif").magnitude[0], single.astype(np.float32))
    vol = load_magnitude(tmp_path / "b.tiff")
    assert vol.kind == "tiff" and vol.frames == 1
    np.testing.assert_array_equal(vol.magnitude, stack.astype(np.float32))


def test_fastmri_reconstruction_and_kspace_rss(tmp_path):
    kspace = (RNG.standard_normal((2, 4, 16, 16)) + 1j * RNG.standard_normal((2, 4, 16, 16))).astype(np.complex64)
    path = write_fastmri(tmp_path / "f.h5", kspace)
    vol = load_magnitude(path)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(vol.magnitude, f["reconstruction_rss"][()])
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["kspace"] = kspace
    np.testing.assert_allclose(load_magnitude(tmp_path / "raw.h5").magnitude, rss(kspace), rtol=1e-6)
    assert vol.kind == "fastmri" and vol.slice_axis == 0


# ----------------------------------------------------------------------------- bad input


def _truncated(path, make):
    make(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _h5_without_kspace(path):
    with h5py.File(path, "w") as f:
        f["reconstruction_rss"] = np.ones((1, 16, 16), np.float32)


BAD = {
    "text.dcm": lambda p: p.write_text("not a dicom file\n"),
    "truncated.dcm": lambda p: _truncated(p, lambda q: write_dicom(q, pixels(), series_uid=generate_uid())),
    "cut-pixels.dcm": lambda p: write_dicom(p, pixels(), series_uid=generate_uid()) and p.write_bytes(p.read_bytes()[:-10]),
    "ct.dcm": lambda p: write_dicom(p, pixels(), series_uid=generate_uid(), modality="CT"),
    "rgb.dcm": lambda p: write_dicom(p, RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8), series_uid=generate_uid()),
    "phase.dcm": lambda p: write_dicom(p, pixels(), series_uid=generate_uid(), ImageType=["ORIGINAL", "PRIMARY", "P", "ND"]),
    "text.png": lambda p: p.write_text("not an image"),
    "truncated.png": lambda p: _truncated(p, lambda q: Image.fromarray(pixels((32, 32))).save(q)),
    "colour.png": lambda p: Image.fromarray(RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p),
    "zero.png": lambda p: Image.fromarray(np.zeros((16, 16), np.uint8)).save(p),
    "tiny.png": lambda p: Image.fromarray(np.full((1, 1), 7, np.uint8)).save(p),
    "truncated.nii.gz": lambda p: _truncated(p, lambda q: nib.save(nib.Nifti1Image(RNG.random((16, 16, 4)), np.eye(4)), q)),
    "nan.nii": lambda p: nib.save(nib.Nifti1Image(np.where(np.eye(16) > 0, np.nan, 1.0)[..., None], np.eye(4)), p),
    "fived.nii": lambda p: nib.save(nib.Nifti1Image(np.ones((16, 16, 2, 2, 2), np.float32), np.eye(4)), p),
    "signed.nii": lambda p: nib.save(nib.Nifti1Image(RNG.standard_normal((16, 16, 2)), np.eye(4)), p),
    "inf.tif": lambda p: tifffile.imwrite(p, np.where(np.eye(16) > 0, np.inf, 1.0).astype(np.float32)),
    "nokspace.h5": lambda p: _h5_without_kspace(p),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_one_line_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    BAD[name](path)
    with pytest.raises(MagnitudeInputError) as info:
        load_magnitude(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and info.value.reason, message


def test_missing_and_unsupported_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path / "absent.nii", tmp_path / "notes.txt"):
        with pytest.raises(MagnitudeInputError, match=str(path)):
            load_magnitude(path)


def test_mixed_folder_yields_good_and_lists_bad(tmp_path, caplog):
    write_series(tmp_path / "ser", n=3)
    Image.fromarray(pixels((16, 16))).save(tmp_path / "good.png")
    nib.save(nib.Nifti1Image(RNG.random((16, 16, 2)).astype(np.float32) + 0.1, np.eye(4)), tmp_path / "good.nii.gz")
    for name in ("ct.dcm", "colour.png", "text.dcm", "nokspace.h5"):
        BAD[name](tmp_path / name)
    (tmp_path / "README.txt").write_text("ignored")
    bad: list[BadInput] = []
    with caplog.at_level(logging.WARNING, logger="scripts.io.magnitude"):
        good = list(iter_magnitude_volumes(tmp_path, bad=bad))
    assert sorted(v.kind for v in good) == ["dicom", "nifti", "png"]
    assert all(isinstance(v, MagnitudeVolume) for v in good) and len({v.id for v in good}) == 3
    assert sorted(os.path.basename(b.source) for b in bad) == ["colour.png", "ct.dcm", "nokspace.h5", "text.dcm"]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert sorted(skipped) == sorted(f"skipped {b.key}: {b.reason}" for b in bad)  # anonymous keys, no path
    assert {b.key for b in bad} == {input_key(b.source, tmp_path) for b in bad} and str(tmp_path) not in "".join(skipped)
    # ids are relative to the root: moving the archive keeps them
    shutil.copytree(tmp_path, tmp_path.parent / (tmp_path.name + "_moved"))
    moved = list(iter_magnitude_volumes(tmp_path.parent / (tmp_path.name + "_moved")))
    assert sorted(v.id for v in moved) == sorted(v.id for v in good)


def test_no_patient_data_anywhere(tmp_path, caplog):
    write_series(tmp_path / "ser", n=3, phi=PHI)
    write_dicom(tmp_path / "ct.dcm", pixels(), series_uid=generate_uid(), modality="CT", phi=PHI)
    write_dicom(tmp_path / "phase.dcm", pixels(), series_uid=generate_uid(), phi=PHI, ImageType=["ORIGINAL", "PRIMARY", "P"])
    _truncated(tmp_path / "cut.dcm", lambda q: write_dicom(q, pixels(), series_uid=generate_uid(), phi=PHI))
    bad: list[BadInput] = []
    with caplog.at_level(logging.DEBUG):
        good = list(iter_magnitude_volumes(tmp_path, bad=bad))
        errors = []
        for b in bad:
            try:
                load_magnitude(b.source)
            except MagnitudeInputError as e:
                errors.append(str(e))
    assert len(good) == 1 and len(bad) == 3 and len(errors) == 3
    vol = good[0]
    texts = [vol.id, repr(vol), repr(vol.magnitude.dtype), repr(vol.affine), vol.kind, *errors,
             *(b.reason for b in bad), *(r.getMessage() for r in caplog.records)]
    for value in PHI.values():
        for variant in {value, value.replace("^", " "), value.split("^")[0]}:
            assert not any(variant in text for text in texts), variant
    assert not any(isinstance(v, pydicom.Dataset) for v in vars(vol).values())


def test_load_magnituded_in_compose(tmp_path):
    from monai.transforms import Compose

    from scripts.core.intensity import NormalizeMagnituded

    data = RNG.integers(1, 500, size=(16, 16, 3)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    _, stack = write_series(tmp_path / "ser", n=2)
    transform = Compose([LoadMagnituded(keys="image", slice_axis=2, root=tmp_path), NormalizeMagnituded(keys="image")])
    out = transform({"image": str(tmp_path / "v.nii.gz")})
    assert out["image"].shape == (3, 16, 16) and out["image_reference"] > 0
    assert out["image_id"] == load_magnitude(tmp_path / "v.nii.gz", root=tmp_path).id
    np.testing.assert_allclose(out["image"] * out["image_reference"], np.moveaxis(data, 2, 0), rtol=1e-6)
    series = LoadMagnituded(keys="image")({"image": str(tmp_path / "ser")})
    np.testing.assert_array_equal(series["image"], stack.astype(np.float32))
    assert series["image_info"]["kind"] == "dicom" and series["image_info"]["affine"].shape == (4, 4)


def test_paired_fastmri_gives_complex_reference(tmp_path):
    """A paired complex h5 (simulator / synthesis output): magnitude = |image_complex|, reference kept."""
    rng = np.random.default_rng(3)
    image = (rng.uniform(0.5, 1.0, (2, 16, 16)) * np.exp(1j * rng.uniform(-3, 3, (2, 16, 16)))).astype(np.complex64)
    kspace = rng.standard_normal((2, 2, 16, 16)).astype(np.complex64)
    path = write_fastmri(tmp_path / "paired.h5", kspace, extra={"image_complex": image})
    volume = load_magnitude(str(path))
    np.testing.assert_array_equal(volume.reference, image)
    np.testing.assert_allclose(volume.magnitude, np.abs(image), rtol=1e-6)
    assert volume.slice_axis == 0 and "reference" not in repr(volume)
