"""The repository as a MONAI bundle: metadata, configs, pins and the README's commands agree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from monai.bundle import ConfigParser, verify_metadata

from conftest import ROOT, python_path

SCHEMA = ROOT / "configs" / "schema" / "meta_schema_20240725.json"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned with =="
            pins[name.lower()] = version
    return pins


def test_metadata_verifies_offline(tmp_path):
    # The schema is kept in the repo: verify_metadata skips the download when the file exists.
    verify_metadata(meta_file=str(ROOT / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_top_level_metadata_is_the_bundle_metadata():
    top, bundle = ROOT / "metadata.json", ROOT / "configs" / "metadata.json"
    assert top.resolve() == bundle.resolve() or top.read_bytes() == bundle.read_bytes()


def test_metadata_versions_match_requirements():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    pins = _pins()
    assert meta["monai_version"] == pins["monai"]
    assert meta["pytorch_version"] == pins["torch"]
    assert meta["numpy_version"] == pins["numpy"]
    for name, version in meta["required_packages_version"].items():
        assert pins.get(name.lower()) == version, f"metadata pins {name}=={version}, requirements.txt has {pins.get(name.lower())}"


def test_no_monai_generative():
    text = (ROOT / "requirements.txt").read_text().lower()
    assert not re.search(r"^monai[-_]generative", text, re.M)


# Override files are used on top of a base: --config_file "['configs/<base>','configs/<overlay>']".
OVERLAYS = {"multi_gpu_train.json": "train.json", "multi_gpu_train_varnet.json": "train_varnet.json", "study_full.json": "study.json", "study_gpu.json": "study.json",
            "study_fastmri.json": "study.json", "study_cpu_long.json": "study.json",
            "prior_study_cpu64.json": "prior_study.json", "prior_study_full.json": "prior_study.json"}


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.json") if p.name != "metadata.json"))
def test_configs_parse(config, monkeypatch):
    monkeypatch.chdir(ROOT)
    parser = ConfigParser()
    files = [str(ROOT / "configs" / c) for c in (OVERLAYS.get(config), config) if c]
    parser.read_config(files)
    parser.parse()
    assert parser.get("imports") is not None, f"{config}: every config imports the bundle's package"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    setup = [line for block in blocks[:2] for line in block.strip().splitlines()]
    assert len(setup) == 2, "the README opens with exactly two set-up commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup[1] in ci, ".ci/run must call the README's test command verbatim"


def test_runner_finds_metadata():
    """`python -m monai.bundle run <id> --config_file configs/<x>.json` reads configs/metadata.json by default."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "probe", "--config_file", "configs/common.json",
           "--probe", "$print('bundle version', @_meta_#version)"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert f"bundle version {meta['version']}" in out.stdout
    assert "Cannot find the metadata" not in out.stdout + out.stderr


def test_configs_are_generated_from_their_sources_and_self_contained():
    """configs/*.json are configs/source/*.json with the %macros expanded (nothing written twice by hand)."""
    from scripts.configs import SOURCE_DIR, main

    assert main(["--check"]) == 0, "run: python -m scripts.configs"
    for path in (ROOT / "configs").glob("*.json"):
        assert '"%' not in path.read_text(), f"{path.name} still holds a macro that resolves against the current folder"
    assert {p.name for p in SOURCE_DIR.glob("*.json")} <= {p.name for p in (ROOT / "configs").glob("*.json")}


def test_training_and_inference_run_from_another_folder(tmp_path):
    """The used-by commands with absolute config paths from an unrelated folder (model-zoo CI, MONAI Label apps)."""
    from test_diffusion import TINY_NET, TINY_TRAIN, make_dataset, make_inputs

    data = make_dataset(tmp_path / "data")
    bundle, elsewhere = tmp_path / "bundle", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the bundle's package importable, as MONAI Label (sys.path) and the model zoo's CI (PYTHONPATH) make it:
    # MONAI's runner adds the bundle root to sys.path only in run(), after a config's `initialize` step
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path()}

    def run(workflow, config, **args):
        args_file = elsewhere / f"{workflow}.json"
        args_file.write_text(json.dumps({"bundle_root": str(bundle), **args}))
        cmd = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", str(ROOT / "configs" / config),
               "--args_file", str(args_file)]
        out = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]

    run("training", "train.json", dataset_dir=data, **TINY_TRAIN)
    assert (bundle / "models" / "model.pt").is_file()
    make_inputs(tmp_path / "in")
    run("inference", "inference.json", input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
        ckpt_path=str(bundle / "models" / "model.pt"), num_inference_steps=2, num_samples=1, **TINY_NET)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(w["kind"] for w in report["written"]) == ["nifti", "png"]
    assert not (elsewhere / "configs").exists() and not (elsewhere / "models").exists()
