"""Archive synthesis: round trip through MONAI's reader, resume, sharding, reproducibility, bad inputs, no patient data."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import sigpy
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from conftest import ROOT
from scripts.synthesis import synthesize as synth
from scripts.coils.simulation import EspiritMapBank, birdcage
from scripts.core.fft import fft2c, ifft2c
from scripts.io.fastmri_h5 import write_fastmri
from scripts.synthesis.synthesize import Synthesizer, input_key, locate_inputs, merge_manifests, shard

PHI = {
    "PatientName": "Quibblefrost^Ottoline",
    "PatientID": "MRN-4471-0923-QX",
    "PatientBirthDate": "19380229",
    "InstitutionName": "Saint Wenceslas Infirmary",
    "AccessionNumber": "ACC-55-31337",
    "ReferringPhysicianName": "Drumgoole^Perpetua",
    "StudyDate": "20040817",
}
NAME_IN_PATH = "Quibblefrost_Ottoline"  # the patient's name in folder and file names too


def _dicom(path: Path, pixels: np.ndarray, uid: str, k: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "MR", uid, k + 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 3.0 * k], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.Rows, ds.Columns = [1.0, 1.0], *pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    for key, value in PHI.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_archive(root: Path, n_nifti: int = 3) -> Path:
    """A small mixed archive: NIfTI volumes, a PNG, a DICOM series full of PHI, and bad inputs."""
    rng = np.random.default_rng(0)
    phantom = np.abs(sigpy.shepp_logan((32, 32)))
    for i in range(n_nifti):
        vol = np.stack([phantom * (100 + 10 * s + i) + rng.random((32, 32)) for s in range(3)], axis=-1)
        (root / "nifti").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), root / "nifti" / f"vol{i}.nii.gz")
    Image.fromarray((phantom * 200 + 20).astype(np.uint8)).save(root / "slice.png")
    series = root / NAME_IN_PATH / "MR_head"
    series.mkdir(parents=True)
    uid = generate_uid()
    for k in range(3):
        _dicom(series / f"{NAME_IN_PATH}_{k:03d}.dcm", (phantom * 3000 + 50 * k + 10), uid, k)
    bad = root / f"{NAME_IN_PATH}_broken"
    bad.mkdir()
    (bad / f"{NAME_IN_PATH}.png").write_bytes(b"not a png at all")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(bad / "blank.png")  # all zero: refused
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return make_archive(tmp_path_factory.mktemp("archive") / "in")


SETTINGS = dict(phase_source="uniform", num_coils=4, image_size=32, noise_std=0.02, seed=7)


def run(archive, out, **kw) -> dict:
    return Synthesizer(archive, out, **{**SETTINGS, **kw}).run()


def report_of(out: Path) -> Path:
    """The default report folder of an output folder: its sibling ``<out>_report``."""
    return Path(f"{out}_report")


def digests(out: Path) -> dict[str, str]:
    """sha256 of every output that must be reproducible (h5 files, merged manifest, skipped report)."""
    files = sorted(out.glob("*.h5")) + [report_of(out) / "manifest.jsonl", report_of(out) / "skipped.json"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def reference_run(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    summary = run(archive, out)
    return out, summary, digests(out)


def test_outputs_round_trip_through_monai_reader(archive, reference_run):
    from monai.apps.reconstruction.fastmri_reader import FastMRIReader

    out, summary, _ = reference_run
    assert summary["written"] == 5 and summary["skipped"] == 2 and summary["merged"]
    records = [json.loads(line) for line in (report_of(out) / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["output"] for r in records) == sorted(p.name for p in out.glob("*.h5"))
    for r in records:
        data = FastMRIReader().read(str(out / r["output"]))
        kspace = data["kspace"]
        assert kspace.shape == (r["num_slices"], 4, 32, 32) and kspace.dtype == np.complex64
        recon = np.sqrt(np.sum(np.abs(ifft2c(kspace)) ** 2, axis=1))
        np.testing.assert_allclose(recon, data["reconstruction_rss"], rtol=1e-4, atol=1e-5)
        with h5py.File(out / r["output"], "r") as f:
            image = f["image_complex"][()]
            assert json.loads(f.attrs["synthesis"]) == r
        assert image.shape == kspace.shape[:1] + kspace.shape[2:] and image.dtype == np.complex64
        # the magnitude is kept: RSS of the coil images is |x| + noise (noise_std 0.02 of the tissue level ~1)
        assert np.sqrt(np.mean((recon - np.abs(image)) ** 2)) < 0.05
        assert r["coil_maps"]["per_slice"] and len(r["coil_maps"]["specs"]) == r["num_slices"]
    assert {r["kind"] for r in records} == {"nifti", "png", "dicom"}
    skipped = json.loads((report_of(out) / "skipped.json").read_text())
    assert len(skipped) == 2 and all(s["input"] and s["reason"] for s in skipped)
    assert any("all zero" in s["reason"] for s in skipped)
    # the reported keys can be located locally
    assert set(locate_inputs(archive, [s["input"] for s in skipped]).values()) == {
        str(archive / f"{NAME_IN_PATH}_broken" / "blank.png"), str(archive / f"{NAME_IN_PATH}_broken" / f"{NAME_IN_PATH}.png")}


def test_same_seed_same_bytes_other_seed_other_bytes(archive, reference_run, tmp_path):
    _, _, ref = reference_run
    run(archive, tmp_path / "a")
    assert digests(tmp_path / "a") == ref
    run(archive, tmp_path / "b", seed=8)
    other = digests(tmp_path / "b")
    assert other.keys() == ref.keys() and all(other[k] != ref[k] for k in ref if k.endswith(".h5"))


def test_resume_after_a_kill_gives_the_uninterrupted_bytes(archive, reference_run, tmp_path, monkeypatch):
    _, _, ref = reference_run
    out = tmp_path / "out"
    real_write, calls = synth.write_fastmri, []

    def killed_on_third(path, *a, **k):  # the job dies while writing its third file
        calls.append(path)
        if len(calls) == 3:
            Path(path).with_name(f".{Path(path).name}.abc123.tmp").write_bytes(b"partial")  # what a kill leaves
            raise KeyboardInterrupt
        return real_write(path, *a, **k)

    monkeypatch.setattr(synth, "write_fastmri", killed_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(archive, out)
    assert len(list(out.glob("*.h5"))) == 2 and not (report_of(out) / "manifest.jsonl").exists()
    monkeypatch.setattr(synth, "write_fastmri", real_write)
    next(iter(sorted(out.glob("*.h5")))).unlink()  # and one finished output is lost too
    summary = run(archive, out)
    assert summary["written"] == 4 and summary["kept"] == 1
    assert digests(out) == ref
    assert not list(out.glob(".*.tmp")), "stale temporary files are cleaned up"
    with pytest.raises(FileExistsError, match="other settings"):
        run(archive, out, phase_source="zero")  # never mixes outputs of different settings


def test_a_failed_write_skips_its_unit_and_keeps_the_files_that_landed(archive, reference_run, tmp_path, monkeypatch):
    """Writes run beside the compute: a write that fails skips its unit (reported), the files that landed
    (here the unit's first sample, with samples_per_volume=2) stay listed, the other units are untouched."""
    real_write, calls = synth.write_fastmri, []

    def fails_on_fourth(path, *a, **k):
        calls.append(Path(path).name)
        if len(calls) == 4:
            raise OSError("disk full (simulated)")
        return real_write(path, *a, **k)

    monkeypatch.setattr(synth, "write_fastmri", fails_on_fourth)
    out = tmp_path / "out"
    summary = run(archive, out, samples_per_volume=2)
    failed = calls[3]
    on_disk = sorted(p.name for p in out.glob("*.h5"))
    listed = sorted(json.loads(line)["output"] for line in (report_of(out) / "manifest.jsonl").read_text().splitlines())
    assert failed not in on_disk and listed == on_disk and len(on_disk) == len(calls) - 1
    skipped = json.loads((report_of(out) / "skipped.json").read_text())
    assert [s["input"] for s in skipped if "disk full" in s["reason"]] == [failed.rsplit("_s", 1)[0]]
    assert summary["written"] == len(on_disk)


def test_shards_cover_every_input_exactly_once(archive, reference_run, tmp_path, monkeypatch):
    _, _, ref = reference_run
    out = tmp_path / "out"
    parts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))  # what torchrun sets
        monkeypatch.setenv("WORLD_SIZE", "3")
        summary = run(archive, out)
        assert summary["merged"] == (rank == 2), "the merged manifest appears when the last part lands"
        parts.append({json.loads(line)["output"] for line in
                      (report_of(out) / "_parts" / f"manifest-r{rank:05d}-of-00003.jsonl").read_text().splitlines()})
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 5  # disjoint and complete
    assert digests(out) == ref  # sharding changes no byte, manifest included
    assert merge_manifests(report_of(out), 3) and digests(out) == ref
    units = list(range(11))
    assert sorted(sum((shard(units, r, 4) for r in range(4)), [])) == units


def _all_strings(out: Path) -> str:
    """Every attribute and string dataset of every h5 file, decoded."""
    found = []
    for p in out.rglob("*.h5"):
        with h5py.File(p, "r") as f:
            f.visititems(lambda name, obj: found.append(name) or found.extend(str(v) for v in obj.attrs.values()))
            found.extend(str(v) for v in f.attrs.values())
            found.append(f["ismrmrd_header"][()].decode() if isinstance(f["ismrmrd_header"][()], bytes) else str(f["ismrmrd_header"][()]))
    return "\n".join(found)


def _phi_needles() -> list[bytes]:
    needles = set()
    for value in [*PHI.values(), NAME_IN_PATH, "Quibblefrost", "Ottoline", "Wenceslas", "Drumgoole", "MR_head"]:
        for v in {value, value.replace("^", " "), value.replace("^", ", ")}:
            for s in {v, v.lower(), v.upper()}:
                needles.add(s.encode())
                needles.add(s.encode("utf-16-le"))
    return sorted(needles)


def test_no_patient_data_in_any_output_or_log(tmp_path, caplog):
    archive = make_archive(tmp_path / "archive", n_nifti=1)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        summary = run(archive, out)
    assert summary["written"] == 3 and summary["skipped"] == 2
    cli = subprocess.run(  # the real command line, logs captured
        [sys.executable, "-m", "monai.bundle", "run", "synthesize", "--config_file", "configs/synthesize.json",
         "--input_dir", str(archive), "--output_dir", str(tmp_path / "cli"), "--phase_source", "uniform",
         "--image_size", "32", "--num_coils", "4"],
        cwd=ROOT, capture_output=True, timeout=300)
    assert cli.returncode == 0, cli.stderr.decode()[-3000:]
    assert b"done:" in cli.stderr + cli.stdout
    blobs = {str(p): p.read_bytes() for d in (out, tmp_path / "cli") for d in (d, report_of(d)) for p in d.rglob("*") if p.is_file()}
    blobs["h5 strings"] = _all_strings(out).encode() + _all_strings(tmp_path / "cli").encode()
    blobs["pytest log"] = caplog.text.encode()
    blobs["cli log"] = cli.stdout + cli.stderr
    assert len(blobs) > 10
    hits = [(name, needle) for name, blob in blobs.items() for needle in _phi_needles()
            if needle in blob or needle.lower() in blob.lower()]
    assert not hits, f"patient data found: {hits[:5]}"


def test_espirit_bank_maps_in_the_pipeline(archive, tmp_path):
    ref = tmp_path / "ref"
    phantom = sigpy.shepp_logan((32, 32)).astype(np.complex64)
    write_fastmri(ref / "r.h5", np.stack([fft2c(birdcage(8, (32, 32), 1.4) * phantom)]))
    bank = EspiritMapBank(tmp_path / "bank.npz", reference=ref, size=32, slices_per_file=1, calib_width=16,
                          kernel_width=5, max_iter=20)
    summary = run(archive, tmp_path / "out", coil_maps=bank, num_coils=[4, 6])  # compressed from the 8-coil entry
    assert summary["written"] == 5
    for line in (report_of(tmp_path / "out") / "manifest.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["coil_maps"]["source"] == "espirit" and r["coil_maps"]["bank_hash"] == bank.hash
        assert r["num_coils"] in (4, 6) and all(s["bank_coils"] == 8 for s in r["coil_maps"]["specs"])


def test_input_keys_are_anonymous_and_stable(archive):
    unit = str(archive / NAME_IN_PATH / "MR_head")
    key = input_key(unit, archive)
    assert len(key) == 16 and NAME_IN_PATH not in key
    assert key == input_key(unit + "/", str(archive) + "/")
    message = f"{unit}/{NAME_IN_PATH}_000.dcm: cannot read {NAME_IN_PATH}_000.dcm in MR_head"
    assert NAME_IN_PATH not in synth._scrub(message, unit, archive) and "MR_head" not in synth._scrub(message, unit, archive)
    assert synth._scrub(f"bad file {archive}/Doe_John/x.dcm: truncated", unit, archive) == "bad file <input>: truncated"
    for words, name in (("truncated DICOM pixel data (3654 of 8192 bytes)", "DICOM/3/IM0001"), ("symbolic link loop", "loop")):
        assert synth._scrub(words, str(archive / name), archive) == words  # plain words of a path stay in the reason
    assert synth._scrub("cannot open 'DICOM' in 3/", str(archive / "DICOM/3/IM0001"), archive) == "cannot open '<input>' in <input>/"


def test_ground_truth_source_from_paired_h5(tmp_path):
    """Paired complex h5 inputs: ground_truth phase reproduces the stored complex image (up to the scale)."""
    rng = np.random.default_rng(5)
    image = (rng.uniform(0.2, 1.0, (2, 32, 32)) * np.exp(1j * rng.uniform(-3, 3, (2, 32, 32)))).astype(np.complex64)
    src = tmp_path / "in"
    write_fastmri(src / "paired.h5", np.asarray(fft2c(image[:, None])), extra={"image_complex": image})
    out = tmp_path / "out"
    Synthesizer(src, out, phase_source="ground_truth", num_coils=4, seed=0).run()
    (written,) = sorted(out.glob("*.h5"))
    with h5py.File(written) as f:
        synthetic = f["image_complex"][()]
        scale = json.loads(f.attrs["synthesis"])["magnitude_scale"]
    np.testing.assert_allclose(synthetic * scale, image, rtol=1e-5, atol=1e-5)
