"""One rule for every batch workflow (synthesize, inference): a bad input is skipped with one line and the run
goes on; a run that makes nothing fails with one line; no input name reaches an output or a log."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as etree
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from archive_helpers import PHI, PHI_FOLDER, TINY_NET, assert_no_phi, bundle_cli, captured_log, head, keys, tiny_checkpoint
from conftest import ROOT, python_path
from scripts.configs import as_bool
from scripts.io.magnitude import find_inputs
from scripts.synthesis.synthesize import INPUT_MAP, NoUsableInput, Synthesizer, input_key
from scripts.studies.prior_study import PriorStudy
from scripts.synthesis.inference_io import PhaseSampleWriter

GOOD = ["good/vol.nii.gz", "good/slice.png", "big.png"]
BAD = ["empty.nii.gz", "garbage.nii.gz", "garbage.png", "garbage.dcm", "garbage.h5", f"{PHI_FOLDER}/{PHI}.png"]
NEAR_EMPTY = "near_empty.png"
CAUSE = dict(zip(BAD, ["empty file", *[rf"{r}.*error" for r in ("nifti", "image", "dicom", "hdf5", "image")]]))  # what each reason names
SYNTH = dict(phase_source="uniform", num_coils=4, image_size=32, seed=0)


def make_archive(root: Path) -> Path:
    """Good inputs (a NIfTI volume, a PNG, a 2048 x 2048 PNG), a near-empty PNG and bad files of every kind."""
    (root / "good").mkdir(parents=True)
    (root / PHI_FOLDER).mkdir()
    vol = np.stack([head(32, 32) * (300 + 20 * s) for s in range(2)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "good" / "vol.nii.gz")
    Image.fromarray((head(32, 32) * 150).astype(np.uint8)).save(root / "good" / "slice.png")
    Image.fromarray((head(2048, 2048) * 150).astype(np.uint8)).save(root / "big.png")
    near_empty = np.zeros((32, 32), np.uint8)
    near_empty[10, 10:13] = 200  # 3 pixels: the 99.5th percentile is 0
    Image.fromarray(near_empty).save(root / NEAR_EMPTY)
    (root / "empty.nii.gz").write_bytes(b"")
    garbage = np.random.default_rng(0).bytes(512)
    for name in BAD[1:]:
        (root / name).write_bytes(garbage)
    return root


def assert_skipped(archive: Path, skipped: list[dict], names, log: str) -> dict[str, str]:
    """Every name is reported once with a one-line reason naming the cause, and logged as ``<key>: <reason>``."""
    expected = keys(archive, names)
    reasons = {s["input"]: s["reason"] for s in skipped}
    assert sorted(reasons) == sorted(expected) and len(skipped) == len(expected)
    for key, reason in reasons.items():
        assert reason and "\n" not in reason and f"{key}: {reason}" in log
        name = expected[key]
        assert name not in CAUSE or re.search(CAUSE[name], reason, re.IGNORECASE), (name, reason)
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
        vol = np.stack([head(32, 32) * (100 + 10 * s + i) for s in range(3)], axis=-1).astype(np.float32)
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
    tiny_checkpoint(root / "models" / "model.pt")
    return root


def _inference(bundle: Path, input_dir: Path, output_dir: Path, **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(config_file=str(ROOT / "configs" / "inference.json"), workflow_type="infer", meta_file=None,
                        logging_file=False, run_id="run", bundle_root=str(bundle), ckpt_path=str(bundle / "models" / "model.pt"),
                        input_dir=str(input_dir),
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
        Image.fromarray((head(32, width) * 150).astype(np.uint8)).save(src / name)
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
    Image.fromarray((head(32, 32) * 150).astype(np.uint8)).save(src / "a.png")
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
    return bundle_cli(run_id, config, ["--args_file", args_file], cwd=cwd)


def test_cli_exits_non_zero_with_one_line(bundle, tmp_path):
    typo = _cli("synthesize.json", "synthesize", tmp_path, input_dir=str(tmp_path / "archvie"), output_dir=str(tmp_path / "o"))
    assert typo.returncode != 0 and "Traceback" not in typo.stderr
    assert typo.stderr.strip().splitlines()[-1] == f"synthesize: input_dir {tmp_path / 'archvie'} does not exist"
    (tmp_path / "bad" / PHI_FOLDER).mkdir(parents=True)
    (tmp_path / "bad" / PHI_FOLDER / f"{PHI}.png").write_bytes(b"not a png")
    failed = _cli("inference.json", "inference", tmp_path, bundle_root=str(bundle),
                  ckpt_path=str(bundle / "models" / "model.pt"), input_dir=str(tmp_path / "bad"),
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


# every boolean switch a user passes on the command line, per config: each use goes through as_bool
SWITCHES = {
    "train.json": ["resume", "progress_bar", "amp", "unet_use_flash_attention", "simulate_if_missing"],
    "train_gan.json": ["resume", "progress_bar", "simulate_if_missing"],
    "train_prior.json": ["resume", "progress_bar", "amp", "unet_use_flash_attention", "simulate_if_missing"],
    "train_varnet.json": ["resume", "progress_bar", "amp"],
    "inference.json": ["unet_use_flash_attention"],
    "simulate.json": ["overwrite", "noise"],
    "reconstruct.json": ["remove_oversampling"],
}


def _uses(config, key: str, path: str = "") -> list[str]:
    """Config ids whose expression reads ``@key`` (as a whole id)."""
    if isinstance(config, dict):
        return [i for k, v in config.items() for i in _uses(v, key, f"{path}#{k}" if path else str(k))]
    if isinstance(config, list):
        return [i for k, v in enumerate(config) for i in _uses(v, key, f"{path}#{k}" if path else str(k))]
    return [path] if isinstance(config, str) and re.search(rf"@{key}\b(?!#)", config) else []


@pytest.mark.parametrize("config", sorted(SWITCHES))
def test_every_command_line_switch_goes_through_as_bool(config, tmp_path):
    """``--resume false`` reaches Python as the string 'false' (true): every use of a switch converts it strictly."""
    for key in SWITCHES[config]:
        uses = _uses(_config(config).config, key)
        assert uses and all(f"as_bool(@{key}, '{key}')" in _config(config)[i] for i in uses), (key, uses)
        for i in uses:  # "nope" is refused by name wherever it is read (before any work: arguments come first)
            with pytest.raises(Exception) as bad:
                _config(config, **{key: "nope", "dataset_dir": str(tmp_path / "none")}).get_parsed_content(i)
            assert f"{key} must be true or false, got 'nope'" in _causes(bad.value), (key, i)


def test_command_line_false_is_false(tmp_path):
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    torch.save({"trainer": {"iteration": 3}}, ckpt_dir / "checkpoint_3.pt")
    for config in ("train.json", "train_gan.json", "train_prior.json"):
        resume = {v: _config(config, ckpt_dir=str(ckpt_dir), resume=v).get_parsed_content("resume_ckpt") for v in ("FALSE", "1")}
        assert resume == {"FALSE": None, "1": str(ckpt_dir / "checkpoint_3.pt")}, config
    assert _config("train_varnet.json", output_dir=str(ckpt_dir), resume="True").get_parsed_content("resume_path")
    assert _config("train_varnet.json", output_dir=str(ckpt_dir), resume="false").get_parsed_content("resume_path") is None
    for config in ("train.json", "train_varnet.json"):
        amp, bar = _config(config, amp="False", progress_bar="0"), _uses(_config(config).config, "progress_bar")
        assert [amp.get_parsed_content(i) for i in _uses(amp.config, "amp")] == [False, False]
        assert [amp.get_parsed_content(i) for i in bar] == [True]  # the progress bar's _disabled_
    assert _config("inference.json", unet_use_flash_attention="false").get_parsed_content(
        "network_def#use_flash_attention") is False
    with pytest.raises(ValueError, match="espirit_convention must be true or false, got 'yes'"):
        PriorStudy(str(tmp_path / "o"), str(tmp_path / "w"), espirit_convention="yes")
    assert PriorStudy(str(tmp_path / "o"), str(tmp_path / "w"), espirit_convention="false").espirit_convention is False
    with pytest.raises(ValueError, match="write_png must be true or false"):
        PhaseSampleWriter(tmp_path, slices=None, png="nope")
    synth = Synthesizer(tmp_path, tmp_path / "o", overwrite="0", maps_per_slice="FALSE", write_input_map="false")
    assert (synth.overwrite, synth.maps_per_slice, synth.write_input_map) == (False, False, False)
