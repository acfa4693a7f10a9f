"""The comparison study: train VarNet on k-space made with each phase source, test on one real-phase set.

Stages run on :class:`scripts.studies.runner.StageRunner` (shared with the prior study): a finished
stage leaves ``<study_dir>/stages/<name>.json`` with a hash of its parameters, and a re-run skips it;
a killed stage is redone, its outputs being written atomically or overwritten.

1. ``simulate``: the paired complex dataset (``scripts.simulate.dataset``), unless ``simulate`` is
   ``None`` (a user's fastMRI folder); ``pair/<split>``: every split made square at
   ``image_size`` and paired with its complex image (:func:`prepare_paired_split`);
2. ``train_diffusion`` / ``train_gan``: the learned phase models on the paired ``train`` split
   (``phase_model='pretrained'``: the shipped diffusion model instead, 64 px studies only),
   through ``configs/train.json`` / ``configs/train_gan.json`` (``ConfigWorkflow``), which receive the
   study's ``image_size``, ``num_coils`` and seed (:meth:`Study.workflow_overrides`);
3. per phase source: ``synthesize``: the magnitude of the ``train`` and ``val`` splits (the
   "magnitude-only archive") gets phase from the source, coil maps (``synthesis['maps']``: simulated
   birdcage, or ``espirit``: a bank of ESPIRiT maps of the paired ``train`` k-space built by the
   ``coil_bank`` stage) and noise, and is
   written as fastMRI k-space (``scripts.synthesis.synthesize``); ``varnet``: a VarNet trained on it
   (``scripts.recon.varnet.train_varnet``, mixed accelerations); ``evaluate``: that VarNet on the
   held-out ground-truth ``test`` split (``scripts.recon.evaluate.evaluate_varnet``, fixed masks per
   R), and on the real slices when given; ``realism``: phase-realism metrics of the source on
   the test magnitudes (``scripts.phase.realism``);
4. ``l1_lambda``: the L1-wavelet lambda chosen on the paired ``val`` split (best mean PSNR over R on a grid,
   ``evaluation['l1_lambda_grid']``; never on test); ``reference``: zero-filled and L1-wavelet rows on
   the same test sets; ``gate``: the instrument check,
   the ground-truth VarNet against zero-filled on its own validation split (synthesised ground-truth
   k-space of the ``val`` split, never the test set): when it does not beat zero-filled at every R in
   PSNR and SSIM, the report's first line says the instrument failed;
5. ``report``: ``scripts.studies.varnet_report`` writes markdown, CSVs and figures.

Everything is seeded; the report records every size, seed and data source. Every stage runs on the
study's ``device`` (``study.json``: CUDA when there is one): the phase models' bundle configs, the
learned phase sources, the synthesizer's coils and FFT, the VarNets, the evaluation (VarNet, ESPIRiT and
L1-wavelet) and the realism classifier; the simulator runs on the CPU (``simulate['num_workers']`` processes).
"""

from __future__ import annotations

import logging
import os
import time
from functools import cached_property
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.io.fastmri_h5 import write_fastmri
from scripts.configs import device_expr, resolve_device, run_bundle
from scripts.core.masks import DEFAULT_CENTER_FRACTION
from scripts.studies.runner import StageRunner

logger = logging.getLogger(__name__)

__all__ = ["PHASE_SOURCES", "Study", "prepare_real_test_set"]

PHASE_SOURCES = ("ground_truth", "diffusion", "gan", "physics", "smooth", "sinusoidal", "uniform", "zero")
LEARNED = {"diffusion": "train_diffusion", "gan": "train_gan"}
PRETRAINED_SIZE = 64  # the shipped phase model's image size (bundles/pretrained/README.md)
SYNTHESIS_MAPS_KEYS = ("phase_source_kwargs", "maps", "birdcage", "bank")  # study settings, not Synthesizer arguments


def prepare_real_test_set(real_dir: str | os.PathLike, output_dir: str | os.PathLike, image_size: int) -> list[str]:
    """Real fully sampled multi-coil brain slices (``*.mat``, :func:`scripts.io.real_data.read_mat_kspace`)
    -> fastMRI h5 at ``image_size``, by cropping the centre of k-space (a lower-resolution
    acquisition of the same field of view: no interpolation of the measured data), scaled to a
    k-space maximum of 1e3.

    Phantoms (:func:`scripts.io.real_data.is_phantom`) are left out. Returns the written files.
    """
    import numpy as np

    from scripts.io.real_data import is_phantom, read_mat_kspace

    out = []
    for mat in sorted(Path(real_dir).glob("*.mat")):
        if is_phantom(mat):
            continue
        kspace = read_mat_kspace(mat)  # (coils, H, W)
        h, w = kspace.shape[-2:]
        top, left = (h - image_size) // 2, (w - image_size) // 2
        kspace = kspace[:, top : top + image_size, left : left + image_size]
        kspace = kspace / np.abs(kspace).max() * 1e3  # scanner units differ by 1e6 between files
        out.append(str(write_fastmri(Path(output_dir) / f"real_{mat.stem}.h5", kspace[None], acquisition="REAL")))
    return out


def prepare_paired_split(files: Sequence[str], output_dir: str | os.PathLike, image_size: int) -> str:
    """Make a fastMRI split study-ready: ``image_size`` square and paired with its complex image.

    Files that already are (the simulator's) are linked by path; others (e.g. fastMRI brain
    multi-coil, 640 x 320 with readout oversampling) get the centre ``image_size`` square of
    every coil image (fastMRI's 320 x 320 crop), back to k-space, and ``image_complex`` from an
    ESPIRiT sensitivity-weighted combination (:func:`scripts.phase.data.espirit_combine`).
    Written atomically per file; a finished file is kept on a re-run. Returns ``output_dir``.
    """
    import numpy as np

    from scripts.io.fastmri_h5 import num_slices, read_slice
    from scripts.core.fft import fft2c, ifft2c
    from scripts.phase.data import center_crop_or_pad, espirit_combine

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        target = out / Path(path).name
        if target.exists():
            continue
        first = read_slice(path, 0, ("kspace", "image_complex"))
        if "image_complex" in first and first["kspace"].shape[-2:] == (image_size, image_size):
            target.symlink_to(Path(path).resolve())
            continue
        kspace, images = [], []
        for i in range(num_slices(path)):
            k = read_slice(path, i, ("kspace",))["kspace"]
            k = k if k.ndim == 3 else k[None]
            if min(k.shape[-2:]) < image_size:
                raise ValueError(f"{path}: slices {k.shape[-2:]} are smaller than image_size {image_size}")
            k = fft2c(center_crop_or_pad(ifft2c(k), (image_size, image_size)))
            kspace.append(k)
            images.append(espirit_combine(k))
        write_fastmri(target, np.stack(kspace), acquisition="PAIRED", extra={"image_complex": np.stack(images)})
    return str(out)


class Study:
    """Run the whole comparison; see the module docstring. All arguments come from ``configs/study.json``."""

    def __init__(
        self,
        study_dir: str | os.PathLike,
        report_dir: str | os.PathLike,
        dataset_dir: str | os.PathLike,
        phase_sources: Sequence[str] = PHASE_SOURCES,
        accelerations: Sequence[int] = (4, 6, 8, 10),
        mask_type: str = "equispaced",
        center_fraction: float = DEFAULT_CENTER_FRACTION,
        seed: int = 0,
        image_size: int = 64,
        num_coils: int = 4,
        simulate: Mapping[str, Any] | None = None,
        diffusion: Mapping[str, Any] | None = None,
        gan: Mapping[str, Any] | None = None,
        synthesis: Mapping[str, Any] | None = None,
        varnet: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Any] | None = None,
        realism: Mapping[str, Any] | None = None,
        real_test_dir: str | os.PathLike | None = None,
        config_dir: str | os.PathLike = "configs",
        num_threads: int | None = None,
        phase_model: str = "train",
        device: str | None = None,
    ) -> None:
        unknown = set(phase_sources) - set(PHASE_SOURCES)
        if unknown:
            raise ValueError(f"unknown phase sources {sorted(unknown)}; known: {', '.join(PHASE_SOURCES)}")
        self.study_dir, self.report_dir = Path(study_dir), Path(report_dir)
        self.source_dir = Path(dataset_dir)  # the user's (or simulated) paired data
        self.dataset_dir = self.study_dir / "paired"  # the same, square at image_size, every file paired
        self.sources = list(phase_sources)
        self.accelerations = [int(r) for r in accelerations]
        self.mask_type, self.center_fraction = mask_type, float(center_fraction)
        self.seed, self.image_size, self.num_coils = int(seed), int(image_size), int(num_coils)
        self.simulate_kwargs = dict(simulate or {})
        self.diffusion, self.gan = dict(diffusion or {}), dict(gan or {})
        self.synthesis, self.varnet = dict(synthesis or {}), dict(varnet or {})
        self.evaluation, self.realism = dict(evaluation or {}), dict(realism or {})
        self.real_test_dir = Path(real_test_dir) if real_test_dir and Path(real_test_dir).is_dir() else None
        self.config_dir = Path(config_dir)
        self.num_threads = num_threads  # torch CPU threads; small CPU-sized nets run fastest on one
        # every stage's device, chosen once (study.json: CUDA when there is one); a GPU stage runs in bf16 where
        # the configs say so, so a device other than the CPU is part of the stage hashes (moving a study redoes it)
        self.device = resolve_device(device)
        if phase_model not in ("train", "pretrained"):
            raise ValueError(f"phase_model must be 'train' or 'pretrained', got {phase_model!r}")
        if phase_model == "pretrained" and self.image_size != PRETRAINED_SIZE:
            raise ValueError(f"the shipped phase model is {PRETRAINED_SIZE} px and this study {self.image_size} px: "
                             "train one (phase_model 'train')")
        self.phase_model = phase_model
        self.l1_tuning: dict | None = None  # set by run() when evaluation has an l1_lambda_grid
        self.stage = StageRunner(self.study_dir, "study")
        self.timings = self.stage.timings

    # ------------------------------------------------------------------ stages
    def workflow_overrides(self, source: str) -> tuple[str, dict[str, Any]]:
        """The bundle config that trains the learned phase source ``source`` and what it receives: the
        study's sizes and seed (so a 256 px study trains 256 px models), the paired data, then the
        study config's settings for that model (``diffusion`` / ``gan``), which may not change the sizes."""
        settings = dict(getattr(self, source))
        clash = {k for k in ("image_size", "num_coils") if k in settings and int(settings[k]) != getattr(self, k)}
        if clash:
            raise ValueError(f"study settings for {source!r} set {sorted(clash)} unlike the study; set them at the top level")
        config = {"diffusion": "train.json", "gan": "train_gan.json"}[source]
        return config, {"bundle_root": str(self.study_dir / source), "dataset_dir": str(self.dataset_dir),
                        "simulate_if_missing": False, "seed": self.seed, "image_size": self.image_size,
                        "num_coils": self.num_coils, **settings}

    def _workflow(self, config: str, **override: Any) -> None:
        run_bundle(self.config_dir / config, run_id="run", device=device_expr(self.device), **override)

    @staticmethod
    def _pretrained() -> str:
        """The shipped phase model (``phase_model='pretrained'``): the study's CPU time goes to the VarNets."""
        from scripts.configs import PRETRAINED_PHASE_MODEL, ROOT

        return str(ROOT / PRETRAINED_PHASE_MODEL)

    def _simulate(self) -> dict:
        from scripts.simulate.dataset import simulate_dataset

        return simulate_dataset(self.source_dir, image_size=self.image_size, num_coils=self.num_coils,
                                seed=self.seed, **self.simulate_kwargs)

    def _train_learned(self, source: str) -> str:
        config, override = self.workflow_overrides(source)
        self._workflow(config, **override)
        root = Path(override["bundle_root"])
        return str(root / "models" / "model.pt") if source == "diffusion" else str(root / "models" / "gan" / "generator.pt")

    def _source_kwargs(self, source: str, checkpoints: Mapping[str, str]) -> dict:
        """Constructor arguments of a phase source: configured ones, its weights, its architecture."""
        kwargs = dict(self.synthesis.get("phase_source_kwargs", {}).get(source, {}))
        if source in checkpoints:
            kwargs["checkpoint"] = checkpoints[source]
        if source == "diffusion" and self.phase_model == "train":  # the architecture the model was trained with
            kwargs["network_overrides"] = {k: v for k, v in self.diffusion.items() if k.startswith("unet_")}
        return kwargs

    @cached_property
    def coil_maps(self):
        """The coil-map source of synthesis (``synthesis['maps']``): ``"birdcage"`` (simulated, the default) or
        ``"espirit"``: a bank of ESPIRiT maps of the paired ``train`` k-space (``synthesis['bank']``: the bank's
        settings), i.e. the coils of the scanner the archive came from, as a user with a few raw scans would do.
        Built once per study, so the bank is hashed and loaded once, not once per phase source."""
        from scripts.coils import simulation

        kind = self.synthesis.get("maps", "birdcage")
        if kind == "birdcage":
            return simulation.BirdcageMaps(**self.synthesis.get("birdcage", {}))
        if kind == "espirit":
            return simulation.EspiritMapBank(self.study_dir / "coil_bank.npz", reference=self.dataset_dir / "train",
                                             **self.synthesis.get("bank", {}))
        raise ValueError(f"synthesis maps must be 'birdcage' or 'espirit', got {kind!r}")

    def _on_device(self, source: str, kwargs: Mapping[str, Any]) -> dict:
        """A phase source's arguments with the study's device (the learned sources run a network)."""
        return {**kwargs, "device": self.device} if source in LEARNED else dict(kwargs)

    def _synthesize(self, source: str, kwargs: Mapping[str, Any]) -> dict:
        from scripts.synthesis.synthesize import Synthesizer

        settings = {k: v for k, v in self.synthesis.items() if k not in SYNTHESIS_MAPS_KEYS}
        maps = self.coil_maps
        out = {}
        for split in ("train", "val"):
            synth = Synthesizer(self.dataset_dir / split, self.study_dir / "kspace" / source / split,
                                phase_source=source, phase_source_kwargs=self._on_device(source, kwargs),
                                num_coils=self.num_coils, image_size=self.image_size, seed=self.seed, overwrite=True,
                                coil_maps=maps, device=self.device, **settings)
            out[split] = synth.run()
        return out

    def _train_varnet(self, source: str) -> str:
        from scripts.recon.varnet import train_varnet

        return str(train_varnet(self.study_dir / "kspace" / source, self.study_dir / "varnet" / source,
                                accelerations=self.accelerations, mask_type=self.mask_type,
                                center_fractions=self.center_fraction, seed=self.seed, device=self.device,
                                **self.varnet))

    def _test_sets(self) -> dict[str, list[str] | str]:
        sets: dict[str, list[str] | str] = {"test_split": str(self.dataset_dir / "test")}
        if self.real_test_dir is not None:
            sets["real"] = self.stage("prepare_real", {"dir": str(self.real_test_dir), "size": self.image_size},
                                      lambda: prepare_real_test_set(self.real_test_dir, self.study_dir / "real_test",
                                                                    self.image_size))
        return sets

    def _evaluate(self, checkpoint: str | None, test_set: str, files, label: str, methods,
                  evaluation: Mapping[str, Any] | None = None) -> str:
        """Evaluator rows of ``methods`` on ``files``; ``evaluation``: the settings (default: the study's)."""
        from scripts.recon.evaluate import evaluate_varnet

        out = self.study_dir / "eval" / test_set / label
        settings = evaluation if evaluation is not None else self.evaluation
        evaluate_varnet(checkpoint, files, out, accelerations=self.accelerations, mask_type=self.mask_type,
                        center_fraction=self.center_fraction, seed=self.seed, methods=methods, label=label,
                        device=self.device, **{k: v for k, v in settings.items() if k != "l1_lambda_grid"})
        return str(out)

    def _tune_l1_lambda(self, files: Sequence[str]) -> dict:
        """The L1-wavelet lambda of the reference rows, chosen on the paired VALIDATION split (never on test): the
        grid value with the best mean PSNR over the study's accelerations (``evaluation['l1_lambda_grid']``)."""
        import numpy as np

        from scripts.recon.evaluate import evaluate_varnet

        settings = {k: v for k, v in self.evaluation.items() if k not in ("l1_lambda", "l1_lambda_grid")}
        scores = {}
        for lam in self.evaluation["l1_lambda_grid"]:
            result = evaluate_varnet(None, files, None, accelerations=self.accelerations, mask_type=self.mask_type,
                                     center_fraction=self.center_fraction, seed=self.seed, methods=["l1_wavelet"],
                                     l1_lambda=float(lam), device=self.device, **{"max_slices_per_volume": 4, **settings})
            scores[float(lam)] = float(np.mean([r["psnr_slice_mean"] for r in result["summary"]]))
        return {"lambda": max(scores, key=scores.get), "val_psnr": scores}

    def _realism(self, source: str, kwargs: Mapping[str, Any]) -> dict:
        from scripts.phase.realism import phase_realism

        settings = {**self.realism, "classifier": {**self.realism.get("classifier", {}), "device": self.device}}
        return phase_realism(source, self._on_device(source, kwargs), self.dataset_dir / "test", seed=self.seed,
                             **settings)

    # ------------------------------------------------------------------ the whole study
    def run(self) -> Path:
        """Run every stage (skipping finished ones) and write the report; returns the report path."""
        t0 = time.perf_counter()
        if self.num_threads:
            import torch

            torch.set_num_threads(int(self.num_threads))
        base = {"dataset_dir": str(self.source_dir), "seed": self.seed, "image_size": self.image_size,
                "num_coils": self.num_coils, **({"device": self.device} if self.device != "cpu" else {})}
        from scripts.phase.data import find_split

        if self.simulate_kwargs:
            simulate = {k: v for k, v in self.simulate_kwargs.items() if k != "num_workers"}  # same bytes with any
            self.stage("simulate", {**base, **simulate}, self._simulate)
        for split in ("train", "val", "test"):
            files = sorted(str(p) for p in Path(find_split(self.source_dir, split)).glob("*.h5"))
            self.stage(f"pair/{split}", {**base, "files": files},
                       lambda: prepare_paired_split(files, self.dataset_dir / split, self.image_size))
        checkpoints = {s: self._pretrained() if (s, self.phase_model) == ("diffusion", "pretrained") else
                       self.stage(LEARNED[s], {**base, **self.workflow_overrides(s)[1]}, lambda s=s: self._train_learned(s))
                       for s in self.sources if s in LEARNED}
        if self.synthesis.get("maps") == "espirit":
            bank = {**base, "files": sorted(str(p) for p in (self.dataset_dir / "train").glob("*.h5")),
                    "bank": self.synthesis.get("bank", {})}
            self.stage("coil_bank", bank, lambda: str(self.coil_maps.build()))
        test_sets = self._test_sets()
        evaluations: dict[str, dict[str, str]] = {name: {} for name in test_sets}
        realism: dict[str, dict] = {}
        varnets: dict[str, str] = {}
        for source in self.sources:
            kwargs = self._source_kwargs(source, checkpoints)
            settings = {k: v for k, v in self.synthesis.items() if k != "phase_source_kwargs"}
            p = {**base, "source": source, "kwargs": kwargs, "synthesis": settings}
            self.stage(f"synthesize/{source}", p, lambda: self._synthesize(source, kwargs))
            p = {**p, "varnet": self.varnet, "accelerations": self.accelerations, "mask": self.mask_type}
            checkpoint = varnets[source] = self.stage(f"varnet/{source}", p, lambda: self._train_varnet(source))
            for name, files in test_sets.items():
                evaluations[name][source] = self.stage(
                    f"evaluate/{name}/{source}", {**p, "files": files, "evaluation": self.evaluation},
                    lambda: self._evaluate(checkpoint, name, files, source, ["varnet"]))
            realism[source] = self.stage(f"realism/{source}", {**p, "realism": self.realism},
                                         lambda: self._realism(source, kwargs))
        reference = dict(self.evaluation)  # the reference rows' settings: the L1 lambda tuned on validation
        if self.evaluation.get("l1_lambda_grid"):
            val = sorted(str(f) for f in (self.dataset_dir / "val").glob("*.h5"))
            self.l1_tuning = self.stage("l1_lambda", {**base, "files": val, "accelerations": self.accelerations,
                                                      "evaluation": self.evaluation}, lambda: self._tune_l1_lambda(val))
            reference["l1_lambda"] = self.l1_tuning["lambda"]
        for name, files in test_sets.items():
            p = {**base, "files": files, "accelerations": self.accelerations, "evaluation": reference}
            evaluations[name]["reference"] = self.stage(
                f"evaluate/{name}/reference", p,
                lambda: self._evaluate(None, name, files, "reference", ["zero_filled", "l1_wavelet"], reference))
        gate = None
        if "ground_truth" in varnets:  # the instrument check: does VarNet beat zero-filled on its own validation data?
            files = sorted(str(f) for f in (self.study_dir / "kspace" / "ground_truth" / "val").glob("*.h5"))
            p = {**base, "checkpoint": varnets["ground_truth"], "files": files, "accelerations": self.accelerations,
                 "evaluation": self.evaluation}
            gate = self.stage("gate", p, lambda: self._evaluate(varnets["ground_truth"], "validation", files, "ground_truth",
                                                                ["varnet", "zero_filled"]))
        from scripts.studies.varnet_report import write_report

        report = write_report(self, evaluations, realism, checkpoints, seconds=time.perf_counter() - t0, gate=gate)
        print(f"study report: {report}")
        return report
