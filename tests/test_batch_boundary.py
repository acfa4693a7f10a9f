"""One rule for every batch workflow (synthesize, inference): a bad input is skipped with one line and the run
goes on; a run that makes nothing fails with one line; no input name reaches an output or a log."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import xml.etree.ElementTree as etree
from contextlib import contextmanager
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from conftest import ROOT, python_path
from scripts.configs import as_bool, parsed
from scripts.io.magnitude import find_inputs
from scripts.synthesis.synthesize import INPUT_MAP, NoUsableInput, Synthesizer, input_key

PHI = "ZZJOHNDOE"
PHI_FOLDER = f"{PHI}_19710203"
TINY_NET = {"image_size": 32, "unet_channels": [8, 16], "unet_attention_levels": [False, True], "unet_num_head_channels": 8}
GOOD = ["good/vol.nii.gz", "good/slice.png", "big.png"]
BAD = ["empty.nii.gz", "garbage.nii.gz", "garbage.png", "garbage.dcm", "garbage.h5", f"{PHI_FOLDER}/{PHI}.png"]
NEAR_EMPTY = "near_empty.png"
CAUSE = dict(zip(BAD, ["nifti", "nifti", "image", "dicom", "hdf5", "image"]))  # what each reason names, and an ...Error
SYNTH = dict(phase_source="uniform", num_coils=4, image_size=32, seed=0)


def _head(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    return ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1) * (1 + 0.3 * np.sin(5 * xx))


def make_archive(root: Path) -> Path:
    """Good inputs (a NIfTI volume, a PNG, a 2048 x 2048 PNG), a near-empty PNG and bad files of every kind."""
    (root / "good").mkdir(parents=True)
    (root / PHI_FOLDER).mkdir()
    vol = np.stack([_head(32, 32) * (300 + 20 * s) for s in range(2)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "good" / "vol.nii.gz")
    Image.fromarray((_head(32, 32) * 150).astype(np.uint8)).save(root / "good" / "slice.png")
    Image.fromarray((_head(2048, 2048) * 150).astype(np.uint8)).save(root / "big.png")
    near_empty = np.zeros((32, 32), np.uint8)
    near_empty[10, 10:13] = 200  # 3 pixels: the 99.5th percentile is 0
    Image.fromarray(near_empty).save(root / NEAR_EMPTY)
    (root / "empty.nii.gz").write_bytes(b"")
    garbage = np.random.default_rng(0).bytes(512)
    for name in BAD[1:]:
        (root / name).write_bytes(garbage)
    return root


def keys(archive: Path, names) -> dict[str, str]:
    return {input_key(archive / n, archive): n for n in names}


@contextmanager
def captured_log():
    """Every log record of the process (any logger), as text."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def assert_no_phi(folders, *texts: str) -> None:
    blobs = {str(p): p.read_bytes() for d in folders for p in Path(d).rglob("*") if p.is_file()}
    blobs.update({f"text {i}": t.encode() for i, t in enumerate(texts)})
    assert len(blobs) > len(texts)
    hits = [name for name, blob in blobs.items() if PHI.lower().encode() in blob.lower()]
    assert not hits, f"{PHI} found in {hits}"


def assert_skipped(archive: Path, skipped: list[dict], names, log: str) -> dict[str, str]:
    """Every name is reported once with a one-line reason naming the cause, and logged as ``<key>: <reason>``."""
    expected = keys(archive, names)
    reasons = {s["input"]: s["reason"] for s in skipped}
    assert sorted(reasons) == sorted(expected) and len(skipped) == len(expected)
    for key, reason in reasons.items():
        assert reason and "\n" not in reason and f"{key}: {reason}" in log
        name = expected[key]
        assert name not in CAUSE or (CAUSE[name] in reason.lower() and "error" in reason.lower()), (name, reason)
    return {expected[k]: r for k, r in reasons.items()}


# ------------------------------------------------------------------------------ synthesize
@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    """One synthesize run on the archive, its output folder INSIDE the input folder."""
    archive = make_archive(tmp_path_factory.mktemp("synth") / "in")
    out = archive / "kspace"
    with captured_log() as log:
        summary = Synthesizer(archive, out, **SYNTH).run()
    return archive, out, summary, log.getvalue()


def test_synthesize_skips_each_bad_input_and_goes_on(synthesized):
    archive, out, summary, log = synthesized
    assert summary["written"] == len(GOOD) and summary["skipped"] == len(BAD) + 1
    report = Path(f"{out}_report")
    skipped = json.loads((report / "skipped.json").read_text())
    reasons = assert_skipped(archive, skipped, BAD + [NEAR_EMPTY], log)
    assert "almost no signal" in reasons[NEAR_EMPTY] and "percentile" in reasons[NEAR_EMPTY]
    manifest = [json.loads(line) for line in (report / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["input_key"] for r in manifest) == sorted(keys(archive, GOOD))
    assert all(r["shape"] == [32, 32] for r in manifest)  # the 2048 x 2048 input resized to image_size
    assert not (report / INPUT_MAP).exists()  # opt-in only
    assert_no_phi([out, report], log)


def test_synthesize_rerun_does_not_read_its_own_outputs(synthesized):
    archive, out, _, _ = synthesized
    summary = Synthesizer(archive, out, **SYNTH, write_input_map=True).run()
    assert summary["units"] == len(GOOD + BAD) + 1 and summary["kept"] == len(GOOD) and summary["written"] == 0
    mapping = json.loads((Path(f"{out}_report") / INPUT_MAP).read_text())
    assert mapping == keys(archive, GOOD + BAD + [NEAR_EMPTY])  # key -> path relative to input_dir


def _fastmri_slice_dataset(root: Path) -> list[tuple[Path, int]]:
    """What ``fastmri.data.mri_data.SliceDataset(root, ..., challenge="multicoil")`` reads: EVERY entry of the
    folder opened with h5py, the ISMRMRD header's sizes and limits, ``kspace`` shape; then each slice's
    ``kspace``, ``reconstruction_rss`` and attributes."""
    ns = {"ismrmrd_namespace": "http://www.ismrm.org/ISMRMRD"}

    def query(header, names):
        return header.find("." + "".join(f"//ismrmrd_namespace:{n}" for n in names), ns).text

    examples = []
    for fname in sorted(root.iterdir()):
        with h5py.File(fname, "r") as hf:
            header = etree.fromstring(hf["ismrmrd_header"][()])
            enc_size = [int(query(header, ["encoding", "encodedSpace", "matrixSize", a])) for a in "xyz"]
            [int(query(header, ["encoding", "reconSpace", "matrixSize", a])) for a in "xyz"]
            limits = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
            center, maximum = int(query(header, limits + ["center"])), int(query(header, limits + ["maximum"])) + 1
            assert 0 <= enc_size[1] // 2 - center < enc_size[1] // 2 - center + maximum
            examples += [(fname, i) for i in range(hf["kspace"].shape[0])]
    for fname, i in examples:
        with h5py.File(fname, "r") as hf:
            assert hf["kspace"][i].ndim == 3 and hf["reconstruction_rss"][i].ndim == 2 and dict(hf.attrs)
    return examples


def test_synthesize_output_folder_reads_as_a_fastmri_dataset(synthesized):
    from monai.apps.reconstruction.fastmri_reader import FastMRIReader

    _, out, summary, _ = synthesized
    assert _fastmri_slice_dataset(out) and {p.suffix for p in out.iterdir()} == {".h5"}
    for f in out.iterdir():
        data = FastMRIReader().read(str(f))
        assert data["kspace"].shape[1:] == (4, 32, 32) and data["kspace"].dtype == np.complex64


def test_two_synthesize_processes_on_one_output_folder(tmp_path):
    """Started together on the same folder with the same settings: both finish, every output intact."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        vol = np.stack([_head(32, 32) * (100 + 10 * s + i) for s in range(3)], axis=-1).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), src / f"sim{i:02d}.nii.gz")
    ready = tmp_path / "ready"
    code = ("import sys, time; from pathlib import Path; from scripts.synthesis.synthesize import Synthesizer\n"
            "ready = Path(sys.argv[3]); (ready / sys.argv[4]).touch()\n"
            "while len(list(ready.iterdir())) < 2: time.sleep(0.01)\n"
            f"Synthesizer(sys.argv[1], sys.argv[2], **{SYNTH!r}).run()")
    ready.mkdir()
    env = {**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src), str(tmp_path / "out"), str(ready), str(k)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    Synthesizer(src, tmp_path / "ref", **SYNTH).run()

    def digests(out: Path) -> dict[str, str]:
        files = [*out.iterdir(), *Path(f"{out}_report").glob("*.*")]
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    assert digests(tmp_path / "out") == digests(tmp_path / "ref") and len(digests(tmp_path / "ref")) == 12 + 2


def test_synthesize_runs_that_make_nothing_fail_with_one_line(tmp_path):
    with pytest.raises(NoUsableInput, match="does not exist") as missing:
        Synthesizer(tmp_path / "no_such_folder", tmp_path / "out").run()
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoUsableInput, match="no input") as empty:
        Synthesizer(tmp_path / "empty", tmp_path / "out").run()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.png").write_bytes(b"not a png")
    with pytest.raises(NoUsableInput, match="all 1 input") as failed:
        Synthesizer(bad, tmp_path / "out").run()
    assert all("\n" not in str(e.value) for e in (missing, empty, failed))
    assert len(json.loads((tmp_path / "out_report" / "skipped.json").read_text())) == 1  # the report is written first


# ------------------------------------------------------------------------------ inference
@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A bundle root holding an untrained tiny phase model (robustness needs no training)."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "models").mkdir()
    torch.manual_seed(0)
    torch.save({"model": parsed("common.json", "network_def", **TINY_NET).state_dict()}, root / "models" / "model.pt")
    return root


def _inference(bundle: Path, input_dir: Path, output_dir: Path, **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(config_file=str(ROOT / "configs" / "inference.json"), workflow_type="infer", meta_file=None,
                        logging_file=False, run_id="run", bundle_root=str(bundle), input_dir=str(input_dir),
                        output_dir=str(output_dir), num_inference_steps=2, num_samples=1, **{**TINY_NET, **overrides})
    wf.initialize()
    return wf


def test_inference_skips_each_bad_input_and_goes_on(bundle, tmp_path):
    archive = make_archive(tmp_path / "in")
    out = archive / "phase"  # inside the input folder: never read as input on a rerun
    # string booleans, as the command line hands them over
    wf = _inference(bundle, archive, out, write_png="false", unet_attention_levels=["false", "TRUE"])
    with captured_log() as log:
        wf.run()
        first = json.loads((out / "report.json").read_text())
        wf.run()
    wf.finalize()
    report = json.loads((out / "report.json").read_text())
    assert report["written"] == first["written"] and report["skipped"] == first["skipped"]
    assert_skipped(archive, report["skipped"], BAD, log.getvalue())
    written = {keys(archive, GOOD + [NEAR_EMPTY])[w["input"]]: w for w in report["written"]}
    assert sorted(written) == sorted(GOOD + [NEAR_EMPTY])
    units = find_inputs(archive, exclude=[out])
    assert {n: w["position"] for n, w in written.items()} == {n: units.index(str(archive / n)) for n in written}
    assert not list(out.glob("*.png"))  # write_png "false" is false

    big = written["big.png"]
    assert big["notes"] == ["phase sampled at 32x32 and resampled to the input's 2048x2048"]
    z = np.asarray(nib.load(out / f"{big['id']}_sample0.nii.gz").dataobj).squeeze()
    magnitude = np.asarray(Image.open(archive / "big.png"), dtype=np.float32)
    assert z.shape == magnitude.shape
    np.testing.assert_allclose(np.abs(z), magnitude, rtol=1e-6)  # exactly the input magnitude
    assert np.ptp(np.angle(z[magnitude > 0])) > 0.1  # a sampled phase, not a constant

    near_empty = written[NEAR_EMPTY]
    assert near_empty["notes"] == ["1 slice(s) without signal (99.5th percentile 0): phase set to zero"]
    z = np.asarray(nib.load(out / f"{near_empty['id']}_sample0.nii.gz").dataobj).squeeze()
    assert np.all(z.imag == 0) and np.count_nonzero(z.real) == 3
    assert not (out / INPUT_MAP).exists()
    assert_no_phi([out], log.getvalue())


def test_inference_sampling_failure_skips_only_that_input(bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name, width in (("a.png", 32), ("b.png", 28)):
        Image.fromarray((_head(32, width) * 150).astype(np.uint8)).save(src / name)
    wf = _inference(bundle, src, tmp_path / "out")
    evaluator = wf.parser.get_parsed_content("evaluator")
    sample = evaluator.inferer

    def failing(inputs, network, *args, **kwargs):  # the sampler fails on one input's slices only
        if inputs.shape[-1] == 28:
            raise RuntimeError("simulated sampler failure")
        return sample(inputs, network, *args, **kwargs)

    evaluator.inferer = failing
    with captured_log() as log:
        wf.run()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [w["input"] for w in report["written"]] == [input_key(src / "a.png", src)]
    assert report["skipped"] == [{"input": input_key(src / "b.png", src), "reason": "RuntimeError: simulated sampler failure"}]
    assert f"{report['skipped'][0]['input']}: RuntimeError: simulated sampler failure" in log.getvalue()


def test_inference_input_map_is_opt_in(bundle, tmp_path):
    src = tmp_path / "in" / PHI_FOLDER
    src.mkdir(parents=True)
    Image.fromarray((_head(32, 32) * 150).astype(np.uint8)).save(src / "a.png")
    wf = _inference(bundle, tmp_path / "in", tmp_path / "out", write_input_map="true")
    wf.run()
    mapping = json.loads((tmp_path / "out" / INPUT_MAP).read_text())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert mapping == {report["written"][0]["input"]: f"{PHI_FOLDER}/a.png"}


def test_inference_runs_that_make_nothing_fail_with_one_line(bundle, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "garbage.png").write_bytes(b"not a png")
    with pytest.raises(NoUsableInput, match="all 1 input"):
        _inference(bundle, tmp_path / "bad", tmp_path / "out").run()
    assert len(json.loads((tmp_path / "out" / "report.json").read_text())["skipped"]) == 1
    with pytest.raises(NoUsableInput, match="does not exist"):
        _inference(bundle, tmp_path / "no_such_folder", tmp_path / "out2").run()


# ------------------------------------------------------------------------------ the command line
def _cli(config: str, run_id: str, cwd: Path, **args) -> subprocess.CompletedProcess:
    args_file = cwd / f"{run_id}.json"
    args_file.write_text(json.dumps(args))
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(ROOT / "configs" / config),
           "--args_file", str(args_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path()}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_exits_non_zero_with_one_line(bundle, tmp_path):
    typo = _cli("synthesize.json", "synthesize", tmp_path, input_dir=str(tmp_path / "archvie"), output_dir=str(tmp_path / "o"))
    assert typo.returncode != 0 and "Traceback" not in typo.stderr
    assert typo.stderr.strip().splitlines()[-1] == f"synthesize: input_dir {tmp_path / 'archvie'} does not exist"
    (tmp_path / "bad" / PHI_FOLDER).mkdir(parents=True)
    (tmp_path / "bad" / PHI_FOLDER / f"{PHI}.png").write_bytes(b"not a png")
    failed = _cli("inference.json", "inference", tmp_path, bundle_root=str(bundle), input_dir=str(tmp_path / "bad"),
                  output_dir=str(tmp_path / "out"), num_inference_steps=2, num_samples=1, **TINY_NET)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("inference: all 1 input(s) failed")
    assert_no_phi([tmp_path / "out"], failed.stdout, failed.stderr)


# ------------------------------------------------------------------------------ strict booleans
def _causes(error: BaseException) -> str:
    text = []
    while error is not None:
        text.append(str(error))
        error = error.__cause__
    return "\n".join(text)


def _config(name: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / name))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def test_strict_booleans_from_the_command_line(tmp_path):
    assert [as_bool(v, "x") for v in (True, "true", "TRUE", "1", 1, False, "false", "False", "0", 0)] == [True] * 5 + [False] * 5
    with pytest.raises(ValueError, match="write_png must be true or false, got 'yes'"):
        as_bool("yes", "write_png")
    net = _config("train.json", **{**TINY_NET, "unet_attention_levels": ["false", "false"]}).get_parsed_content("network_def")
    assert net.attention_levels == [False, False]
    with pytest.raises(Exception) as bad:
        _config("train.json", **{**TINY_NET, "unet_attention_levels": ["maybe", True]}).get_parsed_content("network_def")
    assert "unet_attention_levels must be true or false, got 'maybe'" in _causes(bad.value)
    empty = tmp_path / "empty"
    for config in ("train.json", "train_prior.json"):
        with pytest.raises(Exception) as off:  # 'false' is false: no simulation, the missing data is an error
            _config(config, dataset_dir=str(empty), simulate_if_missing="false").get_parsed_content("prepared_dataset_dir")
        assert "FileNotFoundError" in repr(off.value.__cause__) and not empty.exists()
        with pytest.raises(Exception) as bad:
            _config(config, dataset_dir=str(empty), simulate_if_missing="nope").get_parsed_content("prepared_dataset_dir")
        assert "simulate_if_missing must be true or false, got 'nope'" in _causes(bad.value)
    with pytest.raises(Exception) as bad:
        _config("reconstruct.json", remove_oversampling="nope").get_parsed_content("reconstruct")
    assert "remove_oversampling must be true or false, got 'nope'" in _causes(bad.value)
