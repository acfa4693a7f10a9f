"""What each study stage receives: sizes, coil counts and networks of every profile (built, not trained),
and the tiny study with the learned sources (diffusion, GAN) end to end."""

from __future__ import annotations

import csv

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from conftest import ROOT
from scripts.phase.gan import pix2pix_depth
from scripts.recon.varnet import build_varnet, varnet_profile
from test_study import TINY

PROFILES = {"study": ["study.json"], "study_full": ["study.json", "study_full.json"],
            "study_gpu": ["study.json", "study_gpu.json"], "study_cpu_long": ["study.json", "study_cpu_long.json"]}
CASCADES = {"study": 4, "study_gpu": 8, "study_full": 12, "study_cpu_long": 8}


def _study(files, bundle_root):
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / f) for f in files])
    parser["bundle_root"] = str(bundle_root)
    return parser, parser.get_parsed_content("study_def")


def _stage_parser(config: str, override: dict) -> ConfigParser:
    wf = ConfigWorkflow(config_file=str(ROOT / "configs" / config), meta_file=None, logging_file=False,
                        workflow_type=None, **override)
    return wf.parser


@pytest.mark.parametrize("profile", PROFILES)
def test_every_learned_stage_gets_the_study_sizes_and_network(profile, tmp_path):
    parser, study = _study(PROFILES[profile], tmp_path)
    size, coils = parser["image_size"], parser["num_coils"]
    assert (study.image_size, study.num_coils) == (size, coils)
    for source in ("diffusion", "gan"):
        config, override = study.workflow_overrides(source)
        p = _stage_parser(config, override)
        assert p.get_parsed_content("image_size") == size, source
        assert p.get_parsed_content("num_coils") == coils, source
        assert p.get_parsed_content("dataset_dir") == str(study.dataset_dir)
        crop = p.get_parsed_content("train#deterministic_transforms#0#spatial_size")
        assert crop == size, f"{source} trains on {crop} px crops in a {size} px study"
        if source == "diffusion":
            net = p.get_parsed_content("network_def")
            assert list(net.block_out_channels) == list(parser["diffusion"]["unet_channels"])
        else:
            assert p.get_parsed_content("gan_depth") == pix2pix_depth(size)
    varnet = build_varnet(**varnet_profile(study.varnet.get("varnet_profile", "cpu")))
    assert len(varnet.cascades) == CASCADES[profile]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_stage_receives_the_profile_sizes_and_the_device(profile, device, tmp_path, monkeypatch):
    """What the simulator, the phase-model workflows, the synthesizer, the VarNet trainer and the evaluation
    receive (recorded, not run): the profile's sizes and the one configured device."""
    import scripts.configs
    import scripts.recon.evaluate
    import scripts.phase.realism
    import scripts.recon.varnet
    import scripts.simulate.dataset
    import scripts.studies.varnet_study as varnet_study
    import scripts.synthesis.synthesize

    calls: dict[str, list] = {}

    def record(name):
        def fn(*args, **kwargs):
            calls.setdefault(name, []).append((args, kwargs))
            return tmp_path / "model.pt"
        return fn

    class Synth:
        def __init__(self, *args, **kwargs):
            record("synthesize")(*args, **kwargs)

        def run(self):
            return {}

    monkeypatch.setattr(scripts.simulate.dataset, "simulate_dataset", record("simulate"))
    monkeypatch.setattr(varnet_study, "run_bundle", record("workflow"))
    monkeypatch.setattr(scripts.synthesis.synthesize, "Synthesizer", Synth)
    monkeypatch.setattr(scripts.recon.varnet, "train_varnet", record("varnet"))
    monkeypatch.setattr(scripts.recon.evaluate, "evaluate_varnet", record("evaluate"))
    monkeypatch.setattr(scripts.phase.realism, "phase_realism", record("realism"))
    parser, _ = _study(PROFILES[profile], tmp_path)
    parser["device"] = device
    study = parser.get_parsed_content("study_def", lazy=False)
    size, coils = parser["image_size"], parser["num_coils"]
    study._simulate()
    study._train_learned("diffusion")
    study._synthesize("diffusion", study._source_kwargs("diffusion", {"diffusion": "model.pt"}))
    study._train_varnet("ground_truth")
    study._evaluate("model.pt", "test_split", [], "ground_truth", ["varnet"])
    study._realism("diffusion", study._source_kwargs("diffusion", {"diffusion": "model.pt"}))
    (_, sim), = calls["simulate"]
    assert (sim["image_size"], sim["num_coils"]) == (size, coils)
    assert {k: sim[k] for k in parser["simulate"]} == parser["simulate"]
    (_, wf), = calls["workflow"]
    assert (wf["image_size"], wf["num_coils"], wf["device"]) == (size, coils, f"$torch.device('{device}')")
    for _, syn in calls["synthesize"]:  # train and val
        assert (syn["image_size"], syn["num_coils"], syn["device"]) == (size, coils, device)
        assert syn["phase_source_kwargs"]["device"] == device
        assert syn["phase_source_kwargs"]["network_overrides"]["unet_channels"] == parser["diffusion"]["unet_channels"]
    (_, vn), = calls["varnet"]
    assert vn["device"] == device and vn.get("varnet_profile", "cpu") == parser["varnet"].get("varnet_profile", "cpu")
    (_, ev), = calls["evaluate"]
    assert ev["device"] == device and ev["accelerations"] == parser["accelerations"]
    (args, re), = calls["realism"]
    assert args[1]["device"] == device and re["classifier"]["device"] == device


def test_stage_settings_may_not_change_the_study_sizes(tmp_path):
    parser, _ = _study(PROFILES["study"], tmp_path)
    parser["diffusion"] = {**parser["diffusion"], "image_size": 128}
    study = parser.get_parsed_content("study_def", lazy=False)
    with pytest.raises(ValueError, match="image_size"):
        study.workflow_overrides("diffusion")


def test_the_study_may_start_from_the_shipped_phase_model(tmp_path):
    from scripts.configs import PRETRAINED_PHASE_MODEL
    from scripts.phase.sources import get_phase_source

    parser, _ = _study(PROFILES["study"], tmp_path)
    parser["phase_model"] = "pretrained"
    study = parser.get_parsed_content("study_def", lazy=False)
    kwargs = study._source_kwargs("diffusion", {"diffusion": study._pretrained()})
    assert kwargs["checkpoint"].endswith(PRETRAINED_PHASE_MODEL) and "network_overrides" not in kwargs
    get_phase_source("diffusion", **kwargs)  # the shipped weights fit the network the study then builds
    for value, match in (("128", "64 px"), ("download", "'train' or 'pretrained'")):
        parser, _ = _study(PROFILES["study"], tmp_path)
        parser["phase_model"] = "pretrained" if value == "128" else value
        parser["image_size"] = 128 if value == "128" else 64
        with pytest.raises(RuntimeError) as failed:  # MONAI wraps the constructor's ValueError
            parser.get_parsed_content("study_def", lazy=False)
        assert isinstance(failed.value.__cause__, ValueError) and match in str(failed.value.__cause__)


TINY_LEARNED = {
    **TINY,
    "phase_sources": ["diffusion", "gan"],
    "diffusion": {"scheduler_type": "rflow", "max_epochs": 1, "batch_size": 4, "val_interval": 1, "num_workers": 0,
                  "progress_bar": False, "unet_channels": [8, 16], "unet_attention_levels": [False, False],
                  "unet_num_head_channels": 8},
    "gan": {"max_epochs": 1, "num_workers": 0, "progress_bar": False},
    "synthesis": {"noise_std": 0.01, "phase_source_kwargs": {"diffusion": {"scheduler": "rflow", "num_inference_steps": 2}}},
}


def test_tiny_study_with_the_learned_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the study runs from any folder
    wf = ConfigWorkflow(config_file=str(ROOT / "configs" / "study.json"), workflow_type=None, meta_file=None,
                        logging_file=False, run_id="study", bundle_root=str(tmp_path),
                        real_test_dir=str(tmp_path / "no_real_data"), **TINY_LEARNED)
    wf.initialize()
    study = wf.parser.get_parsed_content("study_def")
    report = study.run()
    with open(report.parent / "metrics_test_split.csv") as f:
        labels = {r["label"] for r in csv.DictReader(f) if r["method"] == "varnet"}
    assert labels == {"diffusion", "gan"}
    # the learned models were trained at the study's size
    _, override = study.workflow_overrides("diffusion")
    assert override["image_size"] == 32 and override["num_coils"] == 2
    assert (tmp_path / "study" / "diffusion" / "models" / "model.pt").is_file()
    assert (tmp_path / "study" / "gan" / "models" / "gan" / "generator.pt").is_file()
