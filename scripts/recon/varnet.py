"""VarNet on fastMRI-format k-space: data, batching, loss, engine helpers and the training API.

The network is :class:`scripts.recon.varnet_model.VarNet` (MONAI's reconstruction parts: residual
cascades that start as pure data consistency, coil maps from the ACS, one mask per sample); see
that module for why MONAI's ``VariationalNetworkModel`` is not used as it is. k-space is
``(B, coils, H, W, 2)`` (real/imaginary last), masks bool ``(B, 1, 1|H, W, 1)``, the output the RSS
magnitude ``(B, H, W)``; :class:`VarNetLoss` and :class:`SliceReconMetric` centre-crop it to the
target.

Batches: slices of one k-space shape share a batch (:class:`ShapeBatchSampler` groups a dataset's
slices by shape, so fastMRI folders with several matrix sizes batch without padding or
resampling the measured data); each slice keeps its own mask and acceleration.

Data (:class:`FastMRISliceDataset`): a slice-level streaming dataset over fastMRI h5 files;
each item reads ONE slice with :func:`scripts.io.fastmri_h5.read_slice`. Per item:

- k-space ``(C, H, W)`` is masked (mask from :class:`scripts.core.masks.MaskSampler`: random for
  training, fixed per (file, slice) for validation/evaluation);
- scaling: the masked k-space and the target are divided by a per-slice factor computed from
  the MEASURED data only, ``scale = max(RSS of the zero-filled image)`` (no ground truth leaks
  into the network input; the same factor is available at test time). The network works on
  images of peak ~1; predictions are multiplied back by ``scale`` before metrics, so metrics
  are in file units. (fastMRI's own VarNet does not rescale brain k-space and relies on the
  U-Nets' input normalisation, which MONAI's ComplexUnet also has; the factor keeps the
  data-consistency arithmetic and the loss well conditioned on any data scale.)
- augmentation (training items, ``augment=True``): the slice is seen flipped and/or transposed
  (:func:`augment_slice`, one of the 8 symmetries of the pixel grid, drawn with the mask);
- target = ``reconstruction_rss`` (or the RSS of the full k-space when absent), centre-cropped
  to ``crop_size`` when one is configured (fastMRI brain: 320x320); the network output is
  centre-cropped to the target's shape in the loss and the metrics.

Training API: :func:`train_varnet` runs ``configs/train_varnet.json`` through MONAI's
``ConfigWorkflow`` and returns the best checkpoint (``<output_dir>/model.pt``, a plain state
dict, best by validation SSIM). ``<output_dir>`` also holds ``checkpoint_iteration=N.pt``
(every ``checkpoint_interval`` iterations) and ``checkpoint_final_iteration=N.pt`` (at the end
or on an exception), each ``{"model", "optimizer", "lr_scheduler", "trainer"}``: a rerun with ``resume=True``
(default) restores the newest of them (:func:`scripts.io.checkpoint.latest_checkpoint`) with
``CheckpointLoader`` and continues from that
iteration (keep ``epoch_length`` unchanged), and :class:`KeyMetricState` keeps the best score
so ``model.pt`` is only replaced by a better model. Networks are rebuilt from the
``varnet.json`` written next to the checkpoints (:func:`load_varnet`).

Threads: on a small shared CPU, torch's intra-op threads spin against other jobs (measured
50x slower with 2 threads than 1 on the 2-core development machine under load); set
``num_threads=1`` (config key / ``train_varnet(..., num_threads=1)``) there.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.losses import SSIMLoss
from monai.metrics import CumulativeIterationMetric

from scripts.configs import CONFIG_DIR, ROOT
from scripts.io.atomic import write_json
from scripts.io.checkpoint import latest_checkpoint, load_weights
from scripts.core.fft import fft2c, ifft2c
from scripts.io.fastmri_h5 import kspace_shape, read_slice, rss
from scripts.core.masks import DEFAULT_CENTER_FRACTION, MaskSampler, to_varnet_mask
from scripts.core.metrics import center_crop, nmse, psnr, ssim
from scripts.recon.varnet_model import VarNet, build_varnet

__all__ = [
    "FastMRISliceDataset",
    "KeyMetricState",
    "ShapeBatchSampler",
    "SliceReconMetric",
    "VarNetLoss",
    "augment_slice",
    "center_crop_t",
    "clip_gradients",
    "list_h5",
    "load_varnet",
    "load_varnet_weights",
    "prepare_example",
    "prepare_varnet_batch",
    "read_network_spec",
    "train_varnet",
    "varnet_reconstruct",
    "varnet_reconstruct_batch",
    "varnet_profile",
    "write_network_spec",
]

NETWORK_SPEC = "varnet.json"
BEST_CHECKPOINT = "model.pt"


# ----------------------------------------------------------------------------------------------------------------------
# network
# ----------------------------------------------------------------------------------------------------------------------
def varnet_profile(name: str = "cpu") -> dict[str, Any]:
    """The :func:`build_varnet` kwargs of profile ``name`` (``"cpu"``, ``"cpu_deep"``, ``"gpu"``, ``"full"``),
    defined once, in ``configs/train_varnet.json#varnet_profiles``."""
    profiles = json.loads((CONFIG_DIR / "train_varnet.json").read_text())["varnet_profiles"]
    if name not in profiles:
        raise ValueError(f"unknown VarNet profile {name!r}; configs/train_varnet.json has {sorted(profiles)}")
    return dict(profiles[name])


def write_network_spec(output_dir: str | os.PathLike, varnet_kwargs: Mapping[str, Any]) -> Path:
    """Write the network's :func:`build_varnet` kwargs to ``<output_dir>/varnet.json`` (so evaluation rebuilds it)."""
    spec = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in dict(varnet_kwargs).items()}
    return write_json(Path(output_dir) / NETWORK_SPEC, spec, sort_keys=False)


def read_network_spec(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The kwargs in ``varnet.json`` next to ``checkpoint``, or ``None``."""
    path = Path(checkpoint).parent / NETWORK_SPEC
    return json.loads(path.read_text()) if path.is_file() else None


def load_varnet(
    checkpoint: str | os.PathLike,
    varnet_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> VarNet:
    """A VarNet with the weights of ``checkpoint``, in eval mode.

    The architecture comes from ``varnet_kwargs``, else from ``varnet.json`` beside the
    checkpoint, else the CPU profile. Accepts the best checkpoint ``model.pt`` (a bare
    state dict), a resume checkpoint (``{"model", "optimizer", "trainer"}``) or ``{"model": ...}``;
    always loaded with ``torch.load(..., weights_only=True)``.
    """
    kwargs = dict(varnet_kwargs) if varnet_kwargs else (read_network_spec(checkpoint) or varnet_profile("cpu"))
    return load_varnet_weights(build_varnet(**kwargs), checkpoint).to(device).eval()


def load_varnet_weights(network: nn.Module, checkpoint: str | os.PathLike) -> nn.Module:
    """``network`` with the weights of ``checkpoint`` (:func:`scripts.io.checkpoint.load_weights`: a bare state dict
    or ``{"model": ...}``, ``weights_only=True``); a missing file or one made for another architecture is one line
    naming the file."""
    from scripts.synthesis.synthesize import OneLineExit

    if not Path(checkpoint).is_file():
        raise OneLineExit(f"VarNet checkpoint not found: {checkpoint} (train one: python -m monai.bundle run training "
                          "--config_file configs/train_varnet.json)")
    try:
        return load_weights(network, checkpoint)
    except RuntimeError as e:
        raise OneLineExit(f"{checkpoint}: does not fit the configured VarNet ({str(e).splitlines()[0]}); give the "
                          "architecture it was trained with (varnet_profile / varnet_kwargs, see varnet.json beside it)") from None


# ----------------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------------
def list_h5(dataset_dir: str | os.PathLike, split: str | None = None) -> list[str]:
    """Sorted ``*.h5`` files in ``dataset_dir/split`` (or ``dataset_dir`` itself when ``split`` is None or absent)."""
    root = Path(dataset_dir)
    folder = root / split if split and (root / split).is_dir() else root
    if split and not (root / split).is_dir() and not glob.glob(str(root / "*.h5")):
        raise FileNotFoundError(f"{root}: no '{split}' folder and no .h5 files")
    return sorted(glob.glob(str(folder / "*.h5")))


def center_crop_t(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Centre crop of the last two dims of a tensor (fastMRI convention, as :func:`scripts.core.metrics.center_crop`)."""
    h, w = x.shape[-2:]
    ch, cw = min(int(shape[-2]), h), min(int(shape[-1]), w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


def prepare_example(
    kspace: np.ndarray,
    mask: np.ndarray,
    target: np.ndarray | None = None,
    crop_size: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One VarNet input from full k-space ``(C, H, W)`` (or ``(H, W)`` single-coil) and a mask.

    Returns ``kspace`` ``(C, H, W, 2)`` float32 (masked, divided by ``scale``), ``mask`` bool
    ``(1, 1|H, W, 1)``, ``target`` ``(h, w)`` float32 (divided by ``scale``), ``zero_filled``
    ``(h, w)`` (file units), ``scale`` (the max of the zero-filled RSS).
    """
    kspace = np.asarray(kspace)
    if kspace.ndim == 2:
        kspace = kspace[None]
    mask = np.asarray(mask, dtype=bool)
    masked = (kspace * mask).astype(np.complex64)
    zero_filled = rss(masked)
    scale = float(zero_filled.max())
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    if target is None:
        target = rss(kspace)
    target = center_crop(np.asarray(target, dtype=np.float32), crop_size)
    zero_filled = center_crop(zero_filled, target.shape)
    return {
        "kspace": torch.view_as_real(torch.from_numpy(masked / np.complex64(scale))).contiguous(),
        "mask": to_varnet_mask(mask)[0],
        "target": torch.from_numpy(np.ascontiguousarray(target / np.float32(scale))),
        "zero_filled": torch.from_numpy(np.ascontiguousarray(zero_filled)),
        "scale": torch.tensor(scale, dtype=torch.float32),
    }


def augment_slice(kspace: np.ndarray, target: np.ndarray | None, op: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One of the 8 flips/transposes of a slice: ``op`` bit 0 flips the columns, bit 1 the rows, bit 2 transposes
    (after the flips), applied to the coil IMAGES (k-space ``(C, H, W)`` back through the centred FFT, so
    k-space and image stay consistent under any FFT-centre convention) and to the target ``(h, w)`` alike.
    ``op`` 0 returns the inputs untouched. The target must be the centred crop of the image (fastMRI's
    ``reconstruction_rss``) with an even margin on each flipped axis, and square slices to transpose;
    :meth:`FastMRISliceDataset.augment_ops` lists the ops a slice allows."""
    if op == 0:
        return kspace, target

    def apply(x: np.ndarray) -> np.ndarray:
        if op & 1:
            x = np.flip(x, -1)
        if op & 2:
            x = np.flip(x, -2)
        if op & 4:
            x = np.swapaxes(x, -1, -2)
        return np.ascontiguousarray(x)

    kspace = fft2c(apply(ifft2c(np.asarray(kspace)))).astype(np.complex64, copy=False)
    return kspace, None if target is None else apply(np.asarray(target))


class FastMRISliceDataset(torch.utils.data.Dataset):
    """Slices of fastMRI multi-coil h5 files, read one at a time (the volumes are never loaded).

    Args:
        data: h5 file paths.
        mask_sampler: :class:`scripts.core.masks.MaskSampler` (mask type, R list, centre fractions, seed).
        crop_size: centre crop ``(h, w)`` of the target, or ``None`` (target as stored).
        fixed_masks: ``False`` = a random mask per item (training; reproducible through torch's
            seed, different in every DataLoader worker); ``True`` = the mask fixed by
            ``(file name, slice)`` (validation/evaluation).
        acceleration: with ``fixed_masks``, use this R for every slice (default: a fixed pick
            from the sampler's list per slice).
        max_slices: keep only the first N slices of the index (quick validation).
        augment: training items (random masks) only: each slice is seen in one of the orientations of
            :func:`augment_slice` its shape allows, drawn from the mask's generator after the mask.
            Brains in other orientations widen what the network has seen of anatomy, which the
            simulated training sets have little of (the study's gain is in its README section).
    """

    def __init__(
        self,
        data: Sequence[str | os.PathLike],
        mask_sampler: MaskSampler,
        crop_size: Sequence[int] | None = None,
        fixed_masks: bool = False,
        acceleration: float | None = None,
        max_slices: int | None = None,
        augment: bool = False,
    ):
        self.files = [str(f) for f in data]
        if not self.files:
            raise ValueError("FastMRISliceDataset: no h5 files given (check dataset_dir and its train/ and val/ folders)")
        shapes = {f: kspace_shape(f) for f in self.files}
        self.index = [(f, s) for f in self.files for s in range(shapes[f][0])]
        if max_slices:
            self.index = self.index[: int(max_slices)]
        # the k-space shape of each item without the slice axis ((C, H, W); (H, W) single-coil), for ShapeBatchSampler:
        # fastMRI folders mix coil counts at one matrix size, and a batch must stack
        self.shapes = [tuple(shapes[f][1:]) for f, _ in self.index]
        self.mask_sampler = mask_sampler
        self.crop_size = None if crop_size is None else tuple(int(c) for c in crop_size)
        self.fixed_masks = bool(fixed_masks)
        self.acceleration = acceleration
        self.augment = bool(augment)

    @staticmethod
    def augment_ops(shape: Sequence[int], target_shape: Sequence[int] | None) -> list[int]:
        """The :func:`augment_slice` ops that keep a slice of k-space ``shape`` ``(H, W)`` consistent with its
        centre-cropped target (an even crop margin on a flipped axis) and its shape (transposes: square only)."""
        (h, w), (th, tw) = shape, (target_shape or shape)
        flips = [op for op in range(4) if not (op & 1 and (w - tw) % 2) and not (op & 2 and (h - th) % 2)]
        return flips + ([op | 4 for op in flips] if h == w and th == tw else [])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, s = self.index[i]
        data = read_slice(path, s, keys=("kspace", "reconstruction_rss"))
        kspace, target = data["kspace"], data.get("reconstruction_rss")
        shape = kspace.shape[-2:]
        if self.fixed_masks:
            mask, accel = self.mask_sampler.fixed(shape, (Path(path).name, s), self.acceleration)
        else:
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
            mask, accel = self.mask_sampler.random(shape, rng)
            if self.augment:
                ops = self.augment_ops(shape, None if target is None else target.shape)
                kspace, target = augment_slice(kspace, target, ops[int(rng.integers(len(ops)))])
        example = prepare_example(kspace, mask, target, self.crop_size)
        example.update(fname=Path(path).name, slice=s, acceleration=float(accel))
        return example


class ShapeBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset items that share one k-space shape (``dataset.shapes``), shuffled every epoch.

    fastMRI folders mix matrix sizes; measured k-space is neither padded nor resampled, so a batch
    holds one shape. Each epoch, items are shuffled within their shape, cut into batches of at most
    ``batch_size`` and the batches shuffled, by a generator seeded with ``seed`` + the epoch count
    (the same order on every rank; ``None``: seeded from torch's global RNG). Under DDP
    (``num_replicas`` > 1) every rank gets every ``num_replicas``-th batch; the list is padded by
    repeating batches so all ranks run the same number of steps.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], batch_size: int, shuffle: bool = True, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0, seed: int | None = None) -> None:
        self.groups: dict[tuple[int, ...], list[int]] = {}
        for i, shape in enumerate(shapes):
            self.groups.setdefault(tuple(int(n) for n in shape), []).append(i)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.seed, self.epoch = seed, 0
        if self.batch_size < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"batch_size {batch_size}, rank {rank} of {num_replicas}: invalid")

    def _batches(self) -> list[list[int]]:
        gen = None
        if self.shuffle:
            seed = int(torch.randint(0, 2**62, ()).item()) if self.seed is None else int(self.seed) + self.epoch
            gen = torch.Generator().manual_seed(seed)
        self.epoch += 1
        batches = []
        for items in self.groups.values():
            order = [items[i] for i in torch.randperm(len(items), generator=gen)] if gen is not None else list(items)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if gen is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen)]
        if self.num_replicas > 1 and batches:
            batches += batches[: (-len(batches)) % self.num_replicas]
            batches = batches[self.rank :: self.num_replicas]
        return batches

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        n = sum((len(v) // self.batch_size) if self.drop_last else -(-len(v) // self.batch_size) for v in self.groups.values())
        return -(-n // self.num_replicas) if self.num_replicas > 1 else n


def prepare_varnet_batch(
    batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor], dict]:
    """``prepare_batch`` for MONAI engines: ``(kspace, target, (mask,), {})`` so the network gets ``net(kspace, mask)``;
    one mask per sample, ``(B, 1, 1|H, W, 1)``."""
    mask = batchdata["mask"]
    if mask.ndim == 4:  # one item's mask (1, 1|H, W, 1) without the batch dim
        mask = mask[None]
    to = {"device": device, "non_blocking": non_blocking, **kwargs}
    return batchdata["kspace"].to(**to), batchdata["target"].to(**to), (mask.to(**to),), {}


@torch.no_grad()
def varnet_reconstruct_batch(
    network: nn.Module, examples: Sequence[Mapping[str, Any]], device: str | torch.device = "cpu"
) -> list[np.ndarray]:
    """Run ``network`` once on :func:`prepare_example` outputs of one k-space shape (each with its own mask):
    the RSS magnitudes in file units, each cropped to its target."""
    kspace = torch.stack([e["kspace"] for e in examples]).to(device)
    mask = torch.stack([e["mask"] for e in examples]).to(device)
    out = network(kspace, mask)
    out = out[:, 0] if out.ndim == 4 else out  # (B, 1, H, W) when built with channel_dim
    return [(center_crop_t(o, e["target"].shape) * e["scale"].to(o.device)).float().cpu().numpy()
            for o, e in zip(out, examples)]


def varnet_reconstruct(
    network: nn.Module, example: Mapping[str, Any], device: str | torch.device = "cpu"
) -> np.ndarray:
    """Run ``network`` on one :func:`prepare_example` output: the RSS magnitude in file units, cropped to the target."""
    return varnet_reconstruct_batch(network, [example], device)[0]


# ----------------------------------------------------------------------------------------------------------------------
# loss and validation metric
# ----------------------------------------------------------------------------------------------------------------------
class VarNetLoss(nn.Module):
    """``l1_weight * L1 + ssim_weight * (1 - SSIM)`` between VarNet's RSS output ``(B, H, W)`` and the target ``(B, h, w)``.

    The output is centre-cropped to the target; both are divided by the target's max per sample,
    so the L1 term is relative to the slice's brightness and MONAI's :class:`~monai.losses.SSIMLoss`
    runs with ``data_range`` = the target max, with fastMRI's window (7x7 uniform, K1 = 0.01, K2 =
    0.03). L1 gives a gradient from the first iteration at any output scale; SSIM, the metric the
    study reports, refines structure. ``ssim_weight=1, l1_weight=0`` is fastMRI's SSIM loss.
    """

    def __init__(self, l1_weight: float = 1.0, ssim_weight: float = 1.0, win_size: int = 7, kernel_type: str = "uniform",
                 k1: float = 0.01, k2: float = 0.03):
        super().__init__()
        self.l1_weight, self.ssim_weight = float(l1_weight), float(ssim_weight)
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0, kernel_type=kernel_type, win_size=win_size, k1=k1, k2=k2)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = center_crop_t(pred, target.shape[-2:]).float()
        data_range = target.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        p, t = pred.unsqueeze(1) / data_range, target.unsqueeze(1) / data_range
        loss = self.l1_weight * (p - t).abs().mean() if self.l1_weight else p.new_zeros(())
        return loss + self.ssim_weight * self.ssim(p, t) if self.ssim_weight else loss


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float | None) -> torch.optim.Optimizer:
    """Clip the global gradient norm of ``optimizer``'s parameters to ``max_norm`` before every step
    (a step pre-hook: MONAI's trainers step inside their iteration; under AMP the grad scaler
    unscales before the step, so the norm is the true one). ``None``/0: no clipping. Returns the optimizer."""
    if max_norm:
        params = [p for group in optimizer.param_groups for p in group["params"]]

        def clip(*_: Any) -> None:
            torch.nn.utils.clip_grad_norm_(params, float(max_norm))

        optimizer.register_step_pre_hook(clip)
    return optimizer


class SliceReconMetric(CumulativeIterationMetric):
    """Validation metric over slices: ``"ssim"``, ``"psnr"`` or ``"nmse"`` (scripts.core.metrics), mean over slices.

    The prediction is centre-cropped to the target; ``data_range`` is the slice's target max
    (a validation proxy: the evaluator uses the volume max, as fastMRI does).
    """

    def __init__(self, metric: str = "ssim"):
        super().__init__()
        if metric not in ("ssim", "psnr", "nmse"):
            raise ValueError(f"metric must be ssim, psnr or nmse, got {metric!r}")
        self.metric = metric

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        values = []
        for p, t in zip(y_pred, y):
            t_np = t.detach().float().cpu().numpy()
            p_np = center_crop_t(p.detach().float(), t.shape[-2:]).cpu().numpy()
            if self.metric == "nmse":
                values.append(nmse(t_np, p_np))
            elif self.metric == "psnr":
                values.append(psnr(t_np, p_np, float(t_np.max())))
            else:
                values.append(ssim(t_np, p_np, float(t_np.max())))
        return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)

    def aggregate(self) -> float:  # type: ignore[override]
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor")
        data = data[torch.isfinite(data)]
        return float(data.mean()) if data.numel() else float("nan")


# ----------------------------------------------------------------------------------------------------------------------
# checkpoints and the training API
# ----------------------------------------------------------------------------------------------------------------------
class KeyMetricState:
    """Keeps a best-model :class:`~monai.handlers.CheckpointSaver`'s record across a resumed run.

    After each validation it writes the saver's key-metric tracking list (best score and file)
    to ``path`` (JSON); when built with ``resume=True`` and the file exists, it loads it back
    into the saver (``CheckpointSaver.load_state_dict``) and into the evaluator's
    ``best_metric``, so a resumed run only replaces ``model.pt`` with a better model. (MONAI's
    own ``key_metric_save_state`` puts the record inside ``model.pt``, which then no longer
    loads as a plain state dict.) Attach it to the evaluator after the saver.
    """

    def __init__(self, saver: Any, path: str | os.PathLike, resume: bool = True):
        self.saver = saver
        self.path = Path(path)
        self.best: tuple[float, int] | None = None
        if resume and self.path.is_file():
            state = json.loads(self.path.read_text())
            saver.load_state_dict({"_saved": [tuple(item) for item in state["saved"]]})
            self.best = (float(state["best_metric"]), int(state.get("best_metric_epoch", -1)))

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._restore)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _restore(self, engine: Any) -> None:
        if self.best is not None and engine.state.best_metric_epoch < 0:
            engine.state.best_metric, engine.state.best_metric_epoch = self.best

    def _save(self, engine: Any) -> None:
        checkpoint = getattr(self.saver, "_key_metric_checkpoint", None)
        if checkpoint is None:
            return
        saved = [[float(priority), str(name)] for priority, name in checkpoint.state_dict()["_saved"]]
        state = {"saved": saved, "best_metric": float(engine.state.best_metric), "best_metric_epoch": int(engine.state.best_metric_epoch)}
        write_json(self.path, state, indent=None, sort_keys=False)


def train_varnet(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    accelerations: Sequence[float] = (4, 6, 8, 10),
    mask_type: str = "equispaced",
    epochs: int = 10,
    epoch_length: int | None = None,
    seed: int = 0,
    center_fractions: float | Sequence[float] = DEFAULT_CENTER_FRACTION,
    crop_size: Sequence[int] | None = None,
    varnet_profile: str = "cpu",
    varnet_kwargs: Mapping[str, Any] | None = None,
    lr: float = 1e-3,
    resume: bool = True,
    device: str | None = None,
    num_workers: int = 0,
    progress_bar: bool = False,
    config_file: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    **overrides: Any,
) -> Path:
    """Train a VarNet on ``dataset_dir/{train,val}`` with ``configs/train_varnet.json``; returns the best checkpoint.

    Args:
        dataset_dir: fastMRI-format folder with ``train/`` and ``val/`` sub-folders of h5 files.
        output_dir: checkpoints (``model.pt`` = best by val SSIM, ``checkpoint_iteration=N.pt``
            = resume state), ``varnet.json`` (architecture) and TensorBoard logs (``logs/``).
        accelerations: R values; one entry = one model per R, several = mixed-R training.
        mask_type: ``"equispaced"`` (default, as the published comparison), ``"random"``, ``"poisson"``.
        epochs: max epochs (a resumed run continues up to this count).
        epoch_length: iterations per epoch (``None`` = one pass over the training slices).
        seed: torch/numpy seed, also the base of the fixed validation masks.
        crop_size: centre crop of target/output, e.g. ``(320, 320)`` for fastMRI brain.
        varnet_profile: ``"cpu"`` (4 cascades, small), ``"cpu_deep"`` (8 cascades of a slimmer U-Net, 1.7x the
            time of ``"cpu"`` at 64 px: configs/study_cpu_long.json), ``"gpu"`` (8 cascades, medium:
            configs/study_gpu.json) or ``"full"`` (MONAI tutorial size);
            ``varnet_kwargs`` overrides it entirely.
        resume: continue from the latest checkpoint in ``output_dir`` when there is one.
        overrides: any other config id, e.g. ``checkpoint_interval=50``, ``val_max_slices=20``.
    Returns:
        ``Path`` of ``<output_dir>/model.pt`` (or of the latest resume checkpoint if no validation ran).
    """
    from scripts.configs import device_expr, run_bundle

    config_file = config_file or str(ROOT / "configs" / "train_varnet.json")
    pairs: dict[str, Any] = {
        "bundle_root": str(ROOT),
        "dataset_dir": str(dataset_dir),
        "output_dir": str(output_dir),
        "accelerations": [float(a) for a in accelerations],
        "mask_type": mask_type,
        "epochs": int(epochs),
        "epoch_length": epoch_length,
        "seed": int(seed),
        "center_fractions": center_fractions if np.isscalar(center_fractions) else list(center_fractions),
        "crop_size": None if crop_size is None else list(crop_size),
        "varnet_profile": varnet_profile,
        "lr": float(lr),
        "resume": bool(resume),
        "num_workers": int(num_workers),
        "progress_bar": bool(progress_bar),
    }
    if varnet_kwargs is not None:
        pairs["varnet_kwargs"] = dict(varnet_kwargs)
    if device is not None:
        pairs["device"] = device_expr(device)
    pairs.update(overrides)
    run_bundle(config_file, run_id="training", **pairs)
    best = Path(output_dir) / BEST_CHECKPOINT
    if best.is_file():
        return best
    latest = latest_checkpoint(output_dir)
    if latest is None:
        raise RuntimeError(f"training wrote no checkpoint to {output_dir}")
    return Path(latest)
