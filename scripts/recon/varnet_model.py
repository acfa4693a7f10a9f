"""The end-to-end VarNet, built on MONAI's reconstruction parts, batched, starting at the zero-filled solution.

Why not MONAI's :class:`~monai.apps.reconstruction.networks.nets.varnet.VariationalNetworkModel` as
it is (measured on this project's data, see ``bench/bench_varnet.py``):

- **Scale at initialisation.** Each MONAI cascade subtracts ``S * ComplexUnet(S^H k)``, and
  ``ComplexUnet`` returns ``unet(x_norm) * std + mean``: at initialisation a random image of
  about 0.4 standard deviations of the CURRENT image, plus its mean. Every cascade
  re-normalises, so the error compounds geometrically: the output starts at 1.9x (4 cascades)
  to 10x (12 cascades, 64 px) and 127x (12 cascades, 256 px, 16 coils) the target, the SSIM
  loss saturates at 1 and its gradient vanishes. Here each cascade's network returns an
  UPDATE, ``unet(x_norm) * std``, whose output convolution starts at zero (a residual branch
  initialised to zero): at initialisation every cascade is pure data consistency and the
  output is the zero-filled RSS image, on the target's scale; gradients still flow from the
  first iteration (the zero layer's weight gradient is its input times the upstream gradient).
- **Coil maps.** The sensitivity network adds a zero-initialised update to the low-resolution
  ACS coil images before the normalisation, so it starts from the classic ACS estimate of the
  maps instead of random ones; and the normalisation is the complex root-sum-of-squares over the
  coils (fastMRI's), where MONAI's divides the real and imaginary parts by separate RSS values. The
  refinement is optional (``sens_features=None``): the CPU profile leaves it out (measured on the
  study's ground-truth k-space: 25 % faster per step, the same test-split PSNR at R=4, +0.15 dB at R=8;
  maps from the data's own ACS do not inherit the synthetic training coils).
- **Exact zeros.** The RSS square roots are clamped below the smallest normal number, so exact
  zeros (noise-free background, zero-padded k-space) do not make the backward pass NaN.
- **Batches.** MONAI's coil-sensitivity model reads ONE mask per batch (``(1, 1, 1, W, 1)``,
  MONAI#5886). Here the mask is ``(B, 1, 1|H, W, 1)`` (or ``(1, ...)`` shared): the ACS box is
  found per sample and the cascades broadcast per-sample masks, so a batch of slices with
  different masks and accelerations trains in one step.

The U-Nets are MONAI's :class:`~monai.apps.reconstruction.networks.nets.complex_unet.ComplexUnet`
(BasicUNet inside, the same normalisation and padding), the transforms MONAI's
``sensitivity_map_reduce`` / ``sensitivity_map_expand`` / ``ifftn_centered_t``; only the residual
forward, the per-sample ACS and the zero initialisation are written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.apps.reconstruction.networks.nets.complex_unet import ComplexUnet
from monai.apps.reconstruction.networks.nets.utils import (
    complex_normalize,
    divisible_pad_t,
    inverse_divisible_pad_t,
    reshape_batch_channel_to_channel_dim,
    reshape_channel_complex_to_last_dim,
    reshape_channel_to_batch_dim,
    reshape_complex_to_channel_dim,
    sensitivity_map_expand,
    sensitivity_map_reduce,
)
from monai.networks.blocks.fft_utils_t import ifftn_centered_t

from scripts.core.masks import acs_bounds_t

__all__ = ["ResidualComplexUnet", "SensitivityModel", "VarNet", "VarNetCascade", "acs_lowpass", "build_varnet", "complex_rss"]


def complex_rss(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """``sqrt(sum |x|^2)`` over ``dims`` of a real/imaginary-last tensor (``dims`` include the last), keeping them.

    The square root's gradient is infinite at 0 (exact zeros: a noise-free background, zero-padded
    k-space) and turns the whole backward pass into NaN; below the smallest normal number the
    sum is clamped, which gives those pixels a zero gradient instead.
    """
    s = (x * x).sum(dim=dims, keepdim=True)
    tiny = 6.103515625e-05 if s.dtype == torch.float16 else 1.1754943508222875e-38  # torch.finfo(dtype).tiny
    return s.clamp_min(tiny).sqrt()


class ResidualComplexUnet(ComplexUnet):
    """MONAI's :class:`ComplexUnet` returning an UPDATE in the input's units, zero at initialisation.

    Input ``(B, C, H, W, 2)``; the real and imaginary parts are normalised per sample as in MONAI
    (``complex_normalize``), the U-Net runs on the padded image, and its output is scaled back by
    the input's standard deviation only (no mean added back: an update, not an image). The final
    1x1 convolution starts at zero, so the update starts at zero.
    """

    def __init__(self, features: Sequence[int], pad_factor: int = 16) -> None:
        super().__init__(spatial_dims=2, features=tuple(features), pad_factor=pad_factor)
        nn.init.zeros_(self.unet.final_conv.weight)
        nn.init.zeros_(self.unet.final_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = reshape_complex_to_channel_dim(x)
        x, _, std = complex_normalize(x)
        x, padding = divisible_pad_t(x, k=self.pad_factor)
        x = inverse_divisible_pad_t(self.unet(x), padding)
        return reshape_channel_complex_to_last_dim(x * std)


def acs_lowpass(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``kspace`` ``(B, C, H, W, 2)`` with everything outside each sample's fully sampled centre box zeroed.

    ``mask``: bool ``(B|1, 1, 1|H, W, 1)``. The box is the largest fully sampled one around the
    k-space centre (all rows for a column mask), grown one side at a time as
    :func:`scripts.core.masks.acs_bounds` does, per sample.
    """
    out = torch.zeros_like(kspace)
    m = mask[..., 0].reshape(mask.shape[0], mask.shape[-3], mask.shape[-2]).cpu()  # (B|1, 1|H, W)
    for b in range(kspace.shape[0]):
        top, bottom, left, right = acs_bounds_t(m[b if m.shape[0] > 1 else 0])
        if m.shape[1] == 1:  # a column mask: every row is sampled
            top, bottom = 0, kspace.shape[-3]
        out[b, :, top:bottom, left:right] = kspace[b, :, top:bottom, left:right]
    return out


class SensitivityModel(nn.Module):
    """Coil maps ``(B, C, H, W, 2)`` from the ACS: the low-resolution coil images plus a learned update
    (zero at initialisation; none when ``features`` is ``None``: the classic ACS estimate, which follows
    the data's own coils), normalised to unit root-sum-of-squares over the coils."""

    def __init__(self, features: Sequence[int] | None, pad_factor: int = 16, eps: float = 1e-12) -> None:
        super().__init__()
        self.refine = ResidualComplexUnet(features, pad_factor) if features else None
        self.eps = eps

    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = ifftn_centered_t(acs_lowpass(masked_kspace, mask), spatial_dims=2, is_complex=True)
        if self.refine is not None:
            x, b = reshape_channel_to_batch_dim(x)  # (B*C, 1, H, W, 2): one U-Net pass per coil image
            x = reshape_batch_channel_to_channel_dim(x + self.refine(x), b)
        # the complex RSS over the coils, as fastMRI's divide_root_sum_of_squares (MONAI's model takes the RSS
        # of the real and imaginary parts separately, which changes the maps' phase)
        return x / complex_rss(x, dims=[1, -1]).clamp_min(self.eps)


class VarNetCascade(nn.Module):
    """One unrolled step: ``k - w * M (k - k0) - S F(U(S^H k))`` with a learned data-consistency weight
    ``w`` (MONAI's ``VarNetBlock``, with a residual U-Net and per-sample masks)."""

    def __init__(self, features: Sequence[int], pad_factor: int = 16) -> None:
        super().__init__()
        self.model = ResidualComplexUnet(features, pad_factor)
        self.dc_weight = nn.Parameter(torch.ones(1))

    def forward(self, current: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros((), dtype=current.dtype, device=current.device)
        dc = torch.where(mask, current - reference, zero) * self.dc_weight
        update = sensitivity_map_expand(self.model(sensitivity_map_reduce(current, maps, spatial_dims=2)), maps,
                                        spatial_dims=2)
        return current - dc - update


class VarNet(nn.Module):
    """End-to-end VarNet: ``net(masked_kspace (B, C, H, W, 2), mask (B|1, 1, 1|H, W, 1) bool)`` -> RSS ``(B, H, W)``.

    Args:
        num_cascades: unrolled steps.
        features: the six BasicUNet feature counts of each cascade's U-Net.
        sens_features: the same for the coil-sensitivity U-Net (``None``: ACS maps, not refined).
        pad_factor: images are padded to a multiple of this inside the U-Nets.
        channel_dim: return ``(B, 1, H, W)`` (the model zoo's batch-channel-spatial layout) instead of ``(B, H, W)``;
            the weights are the same either way.

    TorchScript-able (``torch.jit.script``), so the model zoo's ``ckpt_export`` works.
    """

    def __init__(self, num_cascades: int, features: Sequence[int], sens_features: Sequence[int] | None, pad_factor: int = 16,
                 channel_dim: bool = False) -> None:
        super().__init__()
        self.channel_dim = bool(channel_dim)
        self.sensitivity = SensitivityModel(sens_features, pad_factor)
        self.cascades = nn.ModuleList(VarNetCascade(features, pad_factor) for _ in range(int(num_cascades)))

    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype != torch.bool:
            raise TypeError(f"the mask must be bool, got {mask.dtype}")
        if mask.shape[0] not in (1, masked_kspace.shape[0]):
            raise ValueError(f"{mask.shape[0]} masks for a batch of {masked_kspace.shape[0]}")
        maps = self.sensitivity(masked_kspace, mask)
        kspace = masked_kspace
        for cascade in self.cascades:
            kspace = cascade(kspace, masked_kspace, mask, maps)
        image = ifftn_centered_t(kspace, spatial_dims=2, is_complex=True)
        out = complex_rss(image, dims=[1, -1])[:, 0, ..., 0]
        return out[:, None] if self.channel_dim else out


def build_varnet(num_cascades: int, features: Sequence[int], sens_features: Sequence[int] | None, pad_factor: int = 16,
                 channel_dim: bool = False) -> VarNet:
    """The VarNet of a profile (:func:`scripts.recon.varnet.varnet_profile`) or of explicit sizes."""
    return VarNet(num_cascades, features, sens_features, pad_factor, channel_dim)
