"""Unconditional complex-image diffusion priors trained on three kinds of data.

``python -m monai.bundle run training --config_file configs/train_prior.json --dataset_dir DIR
--prior_data {complex|augmented|magnitude}`` trains ``DiffusionModelUNet(in_channels=2,
out_channels=2)`` on the real and imaginary parts of a complex image, with the schedulers,
prepare-batch, handlers, checkpointing and resume of the conditional phase model
(``configs/train.json`` is reused through ``%`` macros; :class:`PriorPrepareBatch` is
:class:`scripts.phase.diffusion.PhasePrepareBatch` without a condition).

Prior data (``prior_data``), so the three priors can be compared:

- ``complex``: ground-truth complex images of a paired set (``image_complex`` of the simulator,
  or the ESPIRiT coil combination of real multi-coil k-space; :func:`scripts.phase.data.complex_slice`).
- ``augmented``: a magnitude-only archive given phase by the conditional diffusion model: a folder
  written by ``scripts/synthesis/synthesize.py`` (flat ``<key>_s<k>.h5`` files, several phase samples per
  magnitude) or any folder of h5 files holding ``image_complex`` (forced as the source).
- ``magnitude``: ``|image|`` as a real image, imaginary channel zero (the weak baseline).

Normalisation (same scale as :mod:`scripts.core.intensity`): the complex image is divided by the
99.5th percentile of its magnitude, so tissue magnitude sits near 1 and the real and imaginary
channels lie in about [-1.3, 1.3]. DDPM/DDIM's ``clip_sample`` would clip the predicted
``x0`` to [-1, 1] and cut the brightest pixels, so :func:`configure_scheduler` widens the clip
range to ``[-prior_clip, prior_clip]`` (2 by default).

Folders: ``dataset_dir/{train,val,test}/*.h5`` as in :mod:`scripts.phase.data`; a flat folder
(the synthesiser's output) is split by input volume (all phase samples of one magnitude go
to the same side) with :func:`prior_datalist`.

Each trained prior writes ``prior.json`` next to its weights (:func:`write_prior_card`): the
network arguments, scheduler, image size, data kind and normalisation, so that
:func:`load_prior` rebuilds it without the training config.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.transforms import MapTransform

from scripts.phase.diffusion import PhasePrepareBatch, PhaseSamplingInferer, unet_divisor
from scripts.core.complex import complex_to_channels
from scripts.core.intensity import magnitude_reference
from scripts.io.atomic import write_json
from scripts.io.checkpoint import load_weights
from scripts.phase.data import (
    _h5_files,
    center_crop_or_pad,
    complex_slice,
    files_datalist,
    find_split,
    prepare_dataset,
    slice_datalist,
)

__all__ = [
    "PRIOR_DATA",
    "CARD_NAME",
    "LoadComplexSliced",
    "PriorPrepareBatch",
    "PriorSamplingInferer",
    "configure_scheduler",
    "load_prior",
    "normalize_complex",
    "prepare_prior_dataset",
    "prior_datalist",
    "write_prior_card",
]

logger = logging.getLogger(__name__)

PRIOR_DATA = ("complex", "augmented", "magnitude")
CARD_NAME = "prior.json"
COMPLEX_CHANNELS = 2


# --------------------------------------------------------------------------------------
# representation (real/imaginary channels: scripts.core.complex.complex_to_channels)
# --------------------------------------------------------------------------------------
def normalize_complex(z: np.ndarray, prior_data: str = "complex") -> tuple[np.ndarray, float]:
    """``(z / ref, ref)``, ``ref`` the 99.5th percentile of ``|z|``; ``|z| / ref`` for ``"magnitude"``."""
    if prior_data not in PRIOR_DATA:
        raise ValueError(f"prior_data must be one of {PRIOR_DATA}, got {prior_data!r}")
    ref = magnitude_reference(np.abs(z))
    z = np.asarray(z, dtype=np.complex64) / np.float32(ref)
    if prior_data == "magnitude":
        z = np.abs(z).astype(np.complex64)
    return z, ref


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
_SAMPLE_SUFFIX = re.compile(r"_s\d+$")


def _volume_key(path: str) -> str:
    """The input volume a synthesised file came from (``<key>_s<k>.h5`` -> ``<key>``)."""
    return _SAMPLE_SUFFIX.sub("", Path(path).stem)


def prior_datalist(dataset_dir: str | os.PathLike, split: str, val_fraction: float = 0.15, seed: int = 0) -> list[dict]:
    """``[{"file", "slice"}, ...]`` of ``split`` of ``dataset_dir``.

    A folder with split subfolders (``train/``, ``val/``, fastMRI names) is read with
    :func:`scripts.phase.data.slice_datalist`. A flat folder of h5 files (what
    ``scripts/synthesis/synthesize.py`` writes) is split by input volume: files ``<key>_s<k>.h5`` of one
    key stay together; a seeded hash of the key sends about ``val_fraction`` of the volumes
    to ``"val"`` (at least one when there are two or more), the rest to ``"train"``;
    ``"test"`` of a flat folder is empty. The split does not depend on the file order.
    """
    try:
        return slice_datalist(dataset_dir, split)
    except FileNotFoundError:
        files = _h5_files(dataset_dir)
        if not files:
            raise FileNotFoundError(f"{dataset_dir}: no h5 files (neither {split}/ nor a flat folder)") from None
    if split == "test":
        return []
    keys = sorted({_volume_key(f) for f in files})
    rank = sorted(keys, key=lambda k: zlib.crc32(f"{seed}:{k}".encode()))
    n_val = 0 if len(keys) < 2 else max(1, int(round(val_fraction * len(keys))))
    val_keys = set(rank[:n_val])
    chosen = [f for f in files if (_volume_key(f) in val_keys) == (split == "val")]
    return files_datalist(chosen)


def prepare_prior_dataset(dataset_dir: str | os.PathLike, prior_data: str = "complex", simulate: bool = True,
                          **simulate_kwargs: Any) -> str:
    """``dataset_dir``, simulated first (complex/magnitude priors only) when it holds no data.

    An augmented dataset is never simulated: it must be a synthesiser output (or any folder
    of h5 files with ``image_complex``).
    """
    if prior_data not in PRIOR_DATA:
        raise ValueError(f"prior_data must be one of {PRIOR_DATA}, got {prior_data!r}")
    dataset_dir = str(dataset_dir)
    try:
        find_split(dataset_dir, "train")
        has_split = True
    except FileNotFoundError:
        has_split = False
    if has_split or _h5_files(dataset_dir):
        return dataset_dir
    if prior_data == "augmented":
        raise FileNotFoundError(
            f"{dataset_dir}: no h5 files; an augmented prior needs a folder written by scripts/synthesis/synthesize.py "
            "(phase_source 'diffusion') or h5 files with 'image_complex'")
    return prepare_dataset(dataset_dir, simulate=simulate, **simulate_kwargs)


class LoadComplexSliced(MapTransform):
    """``{"file", "slice"}`` -> ``image``: ``(2, H, W)`` float32 real/imag of the normalised complex image.

    Args:
        keys: key of the h5 path; ``slice_key`` holds the slice index.
        prior_data: ``"complex"`` (``complex_source`` decides, see :mod:`scripts.phase.data`),
            ``"augmented"`` (``image_complex`` required) or ``"magnitude"`` (``|z|``, imaginary 0).
        spatial_size: centre crop / zero pad in image space (``None``: keep).
        complex_source, cache_dir, espirit_params: passed to :func:`scripts.phase.data.complex_slice`.
        image_key: output key; the scale is stored under ``<image_key>_reference``.
    """

    def __init__(self, keys: KeysCollection = "file", slice_key: str = "slice", prior_data: str = "complex",
                 spatial_size: Sequence[int] | int | None = None, complex_source: str = "auto",
                 cache_dir: str | os.PathLike | None = None, espirit_params: Mapping | None = None,
                 image_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if prior_data not in PRIOR_DATA:
            raise ValueError(f"prior_data must be one of {PRIOR_DATA}, got {prior_data!r}")
        if isinstance(spatial_size, int):
            spatial_size = (spatial_size, spatial_size)
        self.slice_key, self.prior_data = slice_key, prior_data
        self.spatial_size = None if spatial_size is None else tuple(int(s) for s in spatial_size)
        self.complex_source = "image_complex" if prior_data == "augmented" else complex_source
        self.cache_dir, self.espirit_params = cache_dir, dict(espirit_params or {})
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            z = complex_slice(d[key], int(d[self.slice_key]), self.complex_source, self.cache_dir,
                              self.espirit_params or None)
            z = center_crop_or_pad(z, self.spatial_size)
            z, ref = normalize_complex(z, self.prior_data)
            d[self.image_key] = torch.from_numpy(complex_to_channels(z, dim=0))
            d[f"{self.image_key}_reference"] = ref
        return d


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------
class PriorPrepareBatch(PhasePrepareBatch):
    """:class:`scripts.phase.diffusion.PhasePrepareBatch` without a condition (unconditional prior).

    Same noise, timesteps and targets (epsilon / v / x0 / rectified-flow velocity) and the same
    ``deterministic`` validation mode; the inferer gets only ``noise`` and ``timesteps``.
    """

    def __init__(self, scheduler, deterministic: bool = False, seed: int = 0) -> None:
        super().__init__(scheduler, condition_name=None, deterministic=deterministic, seed=seed)

    def _prepare(self, batchdata, device, non_blocking, **kwargs):
        from monai.engines.utils import default_prepare_batch

        images, _ = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        noise = self.get_noise(images)
        timesteps = self.get_timesteps(images)
        target = self.get_target(images, noise, timesteps)
        return images, target, (), {"noise": noise, "timesteps": timesteps}


def configure_scheduler(scheduler, clip: float | None = 2.0):
    """Set the ``x0`` clip range of a DDPM/DDIM scheduler to ``[-clip, clip]`` (``None``/0: no clipping).

    Returns the scheduler (usable inside a config expression). RFlow has no clipping.
    """
    if isinstance(scheduler, (DDPMScheduler, DDIMScheduler)):
        if clip:
            scheduler.clip_sample = True
            scheduler.clip_sample_values = (-float(clip), float(clip))
        else:
            scheduler.clip_sample = False
    return scheduler


def write_prior_card(ckpt_dir: str | os.PathLike, card: Mapping[str, Any]) -> str:
    """Write ``ckpt_dir/prior.json`` (what :func:`load_prior` needs to rebuild the prior)."""
    path = Path(ckpt_dir) / CARD_NAME
    card = json.loads(json.dumps(dict(card), default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return str(write_json(path, card))


def read_prior_card(weights: str | os.PathLike) -> dict | None:
    """The ``prior.json`` beside ``weights`` (a file or its folder), or ``None``."""
    p = Path(weights)
    card = (p if p.is_dir() else p.parent) / CARD_NAME
    if card.is_file():
        return json.loads(card.read_text(encoding="utf-8"))
    return None


def build_scheduler(name: str, num_train_timesteps: int = 1000, image_size: int = 64, clip: float | None = 2.0):
    """The DDPM / DDIM / RFlow scheduler ``configs/common.json#schedulers#<name>``, with its ``x0`` clip set."""
    from scripts.configs import parsed

    if name not in ("ddpm", "ddim", "rflow"):
        raise ValueError(f"unknown scheduler {name!r} (ddpm, ddim, rflow)")
    scheduler = parsed("common.json", f"schedulers#{name}", num_train_timesteps=int(num_train_timesteps),
                       image_size=int(image_size))
    return configure_scheduler(scheduler, clip)


def load_prior(weights: str | os.PathLike, network: torch.nn.Module | None = None, map_location: Any = "cpu") -> tuple[torch.nn.Module, dict]:
    """``(network in eval mode, card)`` from ``models/prior_<kind>/model.pt`` (or a full checkpoint).

    The architecture comes from the ``prior.json`` card beside the weights; ``network`` is used
    when there is no card (then the card returned is ``{}``). Weights load with
    ``torch.load(..., weights_only=True)``.
    """
    card = read_prior_card(weights) or {}
    if network is None:
        if not card:
            raise FileNotFoundError(f"no {CARD_NAME} beside {weights}: pass the network")
        from monai.networks.nets import DiffusionModelUNet

        network = DiffusionModelUNet(**card["network"])
    load_weights(network, weights, map_location=map_location)
    return network.eval(), card


def sampler_from_card(card: Mapping[str, Any], sampler_type: str | None = None):
    """The sampling scheduler of a prior: RFlow for an RFlow-trained model, else DDIM (or ``sampler_type``)."""
    trained = card.get("scheduler_type", "ddpm")
    name = sampler_type or ("rflow" if trained == "rflow" else "ddim")
    if (name == "rflow") != (trained == "rflow"):
        raise ValueError(f"a prior trained with {trained!r} cannot sample with {name!r}")
    return build_scheduler(name, int(card.get("num_train_timesteps", 1000)), int(card.get("image_size", 64)),
                           card.get("clip", 2.0))


# --------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------
class PriorSamplingInferer(PhaseSamplingInferer):
    """Unconditional sampling of complex images (DDPM / DDIM / RFlow), one ``Inferer`` call.

    ``inferer(inputs, network)``: ``inputs`` is a template ``(B, 2, H, W)`` (only its shape,
    device and dtype are used, and its bytes seed the noise when the inferer has a ``seed``);
    returns ``(B, 2, H, W)`` real/imag samples in the prior's normalised units.
    :meth:`sample` is the convenience form. The reverse process is
    :class:`scripts.phase.diffusion.PhaseSamplingInferer`'s, with an empty condition.
    """

    def __init__(self, scheduler, num_inference_steps: int | None = None, seed: int | None = 0,
                 sample_batch_size: int | None = None, eta: float = 0.0, divisor: int | None = None) -> None:
        super().__init__(scheduler, num_inference_steps=num_inference_steps, num_samples=1, seed=seed,
                         output="phasor", sample_batch_size=sample_batch_size, eta=eta, divisor=divisor)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, seed: int | None = None,
                 **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        inputs = torch.as_tensor(inputs)
        if inputs.ndim != 4:
            raise ValueError(f"expected a template (B, 2, H, W), got {tuple(inputs.shape)}")
        b, _, h, w = inputs.shape
        k = self.divisor or unet_divisor(network)
        if h % k or w % k:
            raise ValueError(f"image size {h}x{w} must be divisible by {k} for this network")
        gen = self._generator(inputs.float(), seed)
        self._set_timesteps(h * w, inputs.device)
        self.last_nfe = len(self.scheduler.timesteps)
        chunk = self.sample_batch_size or b
        out = []
        for start in range(0, b, chunk):
            n = min(chunk, b - start)
            x = torch.randn((n, COMPLEX_CHANNELS, h, w), generator=gen, device=inputs.device, dtype=torch.float32)
            empty = x.new_zeros((n, 0, h, w))  # no condition: concatenating 0 channels is a no-op
            out.append(self._denoise(x, empty, network, gen))
        return torch.cat(out)

    def sample(self, network: torch.nn.Module, num_images: int, image_size: int | Sequence[int], seed: int | None = None,
               device: Any = None) -> torch.Tensor:
        """``num_images`` samples ``(N, 2, H, W)``."""
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        device = device or next(network.parameters()).device
        template = torch.zeros((int(num_images), COMPLEX_CHANNELS, *image_size), device=device)
        return self(template, network, seed=seed)
