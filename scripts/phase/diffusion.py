"""Conditional diffusion for p(phase | magnitude): representation, training batches, sampling.

Phase representation
    The network sees and produces the unit phasor ``(cos phi, sin phi)`` as two channels.
    Phase is a circular quantity: regressing ``phi`` itself puts a false discontinuity at
    +-pi (a wrap would look like a 2*pi error and smooth phase near the wrap would be
    learned as an edge). The phasor is continuous on the circle, bounded to [-1, 1] (the
    range the DDPM/DDIM ``clip_sample`` assumes), and its angle is recovered with
    ``atan2`` whatever length the sampled vector has, so wrapping is honest. Phase is
    always returned in (-pi, pi]: ``atan2`` can return exactly -pi (for a -0.0 sine), which
    :func:`scripts.core.complex.wrap_phase` maps to +pi. The representation's helpers
    (phasor, :func:`~scripts.core.complex.apply_phase`, circular variance) live in
    :mod:`scripts.core.complex`.

Conditioning
    Concatenation: the normalised magnitude (:func:`scripts.core.intensity.normalize_magnitude`)
    is appended as a third input channel at every denoising step, so the network is
    ``DiffusionModelUNet(in_channels=3, out_channels=2)``. MONAI's
    ``DiffusionPrepareBatch`` hands a condition to cross-attention by default; here
    :class:`PhasePrepareBatch` passes ``mode="concat"`` to the stock ``DiffusionInferer``.

Background
    Nothing special is done for the background: the training target is the phasor of the
    *noisy* complex image, whose phase outside the head is noise (uniform on the circle),
    and the model learns to reproduce that from the near-zero magnitude there.

Schedulers
    The same network trains with DDPM/DDIM (epsilon target, ``noise``) or rectified flow
    (``RFlowScheduler``, velocity target ``x0 - noise``): :class:`PhasePrepareBatch` picks
    the target from the scheduler it is given, and :class:`PhaseSamplingInferer` steps any of
    the three. A model trained with the DDPM objective samples with DDPM (1000 steps) or
    DDIM (few steps); RFlow sampling needs a model trained with the RFlow objective.

TorchScript
    ``monai.networks.nets.DiffusionModelUNet`` cannot be TorchScripted (the model zoo
    excludes diffusion bundles from ``ckpt_export``); the bundle ships eager weights only
    (``models/model.pt``, a plain state dict loaded with ``torch.load(..., weights_only=True)``
    by :func:`scripts.io.checkpoint.load_weights`).
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.engines.utils import DiffusionPrepareBatch, default_prepare_batch
from monai.inferers import Inferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler
from monai.transforms import MapTransform

from scripts.core.complex import apply_phase, circular_variance, phasor_to_phase
from scripts.io.checkpoint import unwrap

__all__ = [
    "PHASOR_CHANNELS",
    "PhasePrepareBatch",
    "PhaseSamplingInferer",
    "PhaseToComplexd",
    "unet_divisor",
]

PHASOR_CHANNELS = 2  # the representation: scripts.core.complex.complex_to_phasor / phasor_to_phase


# --------------------------------------------------------------------------------------
# training batches
# --------------------------------------------------------------------------------------
def _content_seed(t: torch.Tensor, base: int) -> int:
    """A seed that depends only on ``base`` and the bytes of ``t`` (order independent)."""
    data = t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return (zlib.crc32(data) ^ (int(base) * 2654435761)) % (2**63 - 1)


class PhasePrepareBatch(DiffusionPrepareBatch):
    """``prepare_batch`` for the phase diffusion model, for the stock ``DiffusionInferer``.

    Returns ``(phasor, target, (), {"noise", "timesteps", "condition", "mode": "concat"})``:
    the magnitude in ``batchdata[condition_name]`` is concatenated to the noisy phasor as an
    input channel. The target follows the scheduler: ``noise`` for epsilon-prediction
    DDPM/DDIM, the velocity for ``prediction_type="v_prediction"``, ``x0`` for
    ``"sample"``, and ``x0 - noise`` for ``RFlowScheduler`` (whose timesteps come from its
    own ``sample_timesteps``: uniform or logit-normal, continuous).

    ``deterministic=True`` (use it for validation) draws noise and timesteps from a
    generator seeded by ``seed`` and the batch content, so the validation loss is a
    function of the weights alone and can select checkpoints.
    """

    def __init__(
        self,
        scheduler: DDPMScheduler | DDIMScheduler | RFlowScheduler,
        condition_name: str = "magnitude",
        deterministic: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(num_train_timesteps=int(scheduler.num_train_timesteps), condition_name=condition_name)
        self.scheduler = scheduler
        self.rflow = isinstance(scheduler, RFlowScheduler)
        self.deterministic = deterministic
        self.seed = seed

    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        if self.deterministic:  # CPU RNG (forked in __call__), then moved: same numbers on any device
            return torch.randn(images.shape, dtype=images.dtype).to(images.device)
        return torch.randn_like(images)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        source = images.detach().cpu() if self.deterministic else images
        if self.rflow:
            t = self.scheduler.sample_timesteps(source)
        else:
            t = torch.randint(0, self.num_train_timesteps, (images.shape[0],), device=source.device).long()
        return t.to(images.device)

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.rflow:
            return images - noise
        prediction_type = getattr(self.scheduler, "prediction_type", "epsilon")
        if prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        if prediction_type == "sample":
            return images
        return noise

    def _prepare(self, batchdata, device, non_blocking, **kwargs):
        images, _ = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        noise = self.get_noise(images)
        timesteps = self.get_timesteps(images)
        target = self.get_target(images, noise, timesteps)
        condition = batchdata[self.condition_name].to(device, non_blocking=non_blocking, **kwargs)
        return images, target, (), {"noise": noise, "timesteps": timesteps, "condition": condition, "mode": "concat"}

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        if not self.deterministic:
            return self._prepare(batchdata, device, non_blocking, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_content_seed(torch.as_tensor(batchdata["image"]), self.seed))
            return self._prepare(batchdata, device, non_blocking, **kwargs)


# --------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------
def unet_divisor(network: torch.nn.Module) -> int:
    """The factor H and W must be divisible by: ``2 ** (levels - 1)`` for a DiffusionModelUNet."""
    channels = getattr(unwrap(network), "block_out_channels", None)
    return 2 ** (len(channels) - 1) if channels else 1


class PhaseSamplingInferer(Inferer):
    """Whole reverse-diffusion sampling of phase given magnitude, as one ``Inferer`` call.

    ``inferer(inputs, network)``, as MONAI Label and ``SupervisedEvaluator`` call it, takes
    the normalised magnitude ``(B, 1, H, W)`` and returns ``(B, num_samples, H, W)`` phase
    in (-pi, pi] (``output="phase"``) or ``(B, num_samples, 2, H, W)`` unit phasors
    (``output="phasor"``). H and W need not fit the UNet: the magnitude is zero-padded
    (zero = background) to a multiple of ``2 ** (levels - 1)`` and the result cropped back.

    Randomness comes from one ``torch.Generator`` per call, on the inputs' device, seeded by:
    a ``seed=`` keyword of the call if given (used exactly); else, when the inferer has a
    ``seed``, that seed mixed with a hash of the input magnitude, so every slice gets its
    own noise yet the result does not depend on the order slices are processed in; else
    fresh entropy. The same seed and settings give the same output bytes on CPU.

    Args:
        scheduler: a DDPM, DDIM or RFlow scheduler (the sampler).
        num_inference_steps: sampling steps (default: the scheduler's ``num_train_timesteps``).
        num_samples: phase samples per input image.
        seed: base seed (see above); ``None`` for non-reproducible sampling.
        output: ``"phase"`` or ``"phasor"``.
        sample_batch_size: most images passed through the network at once (``None``: all).
        eta: DDIM stochasticity: 0 is the deterministic DDIM ODE, 1 adds DDPM-like fresh noise
            at every (strided) step. ``configs/inference.json`` uses 1: on the simulated-data
            model of ``bench/bench_samplers.py``, eta=0 left residual noise inside the head.
        divisor: override the padding factor (default: from the network).
    """

    def __init__(
        self,
        scheduler: DDPMScheduler | DDIMScheduler | RFlowScheduler,
        num_inference_steps: int | None = None,
        num_samples: int = 1,
        seed: int | None = 0,
        output: str = "phase",
        sample_batch_size: int | None = None,
        eta: float = 0.0,
        divisor: int | None = None,
    ) -> None:
        super().__init__()
        if output not in ("phase", "phasor"):
            raise ValueError(f"output must be 'phase' or 'phasor', got {output!r}")
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps or scheduler.num_train_timesteps)
        self.num_samples = int(num_samples)
        self.seed = seed
        self.output = output
        self.sample_batch_size = sample_batch_size
        self.eta = float(eta)
        self.divisor = divisor
        self.last_nfe = 0  # network evaluations per sample in the last call

    # -- helpers --------------------------------------------------------------------
    def _generator(self, inputs: torch.Tensor, seed: int | None) -> torch.Generator:
        gen = torch.Generator(device=inputs.device)
        if seed is not None:
            gen.manual_seed(int(seed))
        elif self.seed is not None:
            gen.manual_seed(_content_seed(inputs, self.seed))
        else:
            gen.seed()
        return gen

    def _set_timesteps(self, numel: int, device: torch.device) -> torch.Tensor:
        sched = self.scheduler
        if isinstance(sched, RFlowScheduler):
            sched.set_timesteps(self.num_inference_steps, device=device, input_img_size_numel=numel)
        else:
            sched.set_timesteps(self.num_inference_steps, device=device)
        return sched.timesteps

    def _denoise(self, x: torch.Tensor, cond: torch.Tensor, network: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
        sched = self.scheduler
        timesteps = sched.timesteps
        # Under torch.autocast (bf16 sampling on a GPU) only the network runs in low precision: the
        # scheduler's arithmetic stays float32 (autocast also refuses torch.cat of integer timesteps).
        with torch.autocast(x.device.type, enabled=False):
            next_ts = torch.cat((timesteps[1:], torch.zeros(1, dtype=timesteps.dtype, device=timesteps.device)))
        for t, t_next in zip(timesteps, next_ts):
            tt = t.to(x.device).expand(x.shape[0])
            tt = tt.float() if isinstance(sched, RFlowScheduler) else tt.long()
            out = network(torch.cat((x, cond), dim=1), timesteps=tt).float()
            if isinstance(sched, RFlowScheduler):
                x, _ = sched.step(out, t, x, t_next)
            elif isinstance(sched, DDIMScheduler):
                x, _ = sched.step(out, int(t), x, eta=self.eta, generator=gen)
            else:
                x, _ = sched.step(out, int(t), x, generator=gen)
        return x

    # -- public ---------------------------------------------------------------------
    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, seed: int | None = None, **kwargs: Any
    ) -> torch.Tensor:
        inputs = torch.as_tensor(inputs)
        if inputs.ndim != 4 or inputs.shape[1] != 1:
            raise ValueError(f"expected a normalised magnitude (B, 1, H, W), got {tuple(inputs.shape)}")
        cond = inputs.float().as_subclass(torch.Tensor) if hasattr(inputs, "as_subclass") else inputs.float()
        b, _, h, w = cond.shape
        k = self.divisor or unet_divisor(network)
        ph, pw = (-h) % k, (-w) % k
        if ph or pw:  # symmetric zero padding, cropped back below
            cond = F.pad(cond, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        hp, wp = cond.shape[-2:]
        gen = self._generator(inputs, seed)
        self._set_timesteps(hp * wp, cond.device)
        self.last_nfe = len(self.scheduler.timesteps)

        n = self.num_samples
        cond = cond.repeat_interleave(n, dim=0)  # (B*N, 1, Hp, Wp): image-major
        chunk = self.sample_batch_size or cond.shape[0]
        results = []
        for start in range(0, cond.shape[0], chunk):
            c = cond[start : start + chunk]
            x = torch.randn((c.shape[0], PHASOR_CHANNELS, hp, wp), generator=gen, device=c.device, dtype=c.dtype)
            results.append(self._denoise(x, c, network, gen))
        x = torch.cat(results).reshape(b, n, PHASOR_CHANNELS, hp, wp)
        top, left = ph // 2, pw // 2
        x = x[..., top : top + h, left : left + w]
        if self.output == "phasor":
            return x / x.norm(dim=2, keepdim=True).clamp_min(1e-12)
        return phasor_to_phase(x, dim=2)


# --------------------------------------------------------------------------------------
# post-processing
# --------------------------------------------------------------------------------------
class PhaseToComplexd(MapTransform):
    """Turn sampled phase into complex images with exactly the input magnitude.

    Reads ``phase_key`` ``(N, H, W)`` (phase samples) and ``magnitude_key`` ``(1, H, W)``
    (the magnitude in its original units); writes ``complex_key`` ``(N, H, W)`` complex64
    ``magnitude * exp(i phase)`` and ``spread_key`` ``(1, H, W)``, the circular variance
    across the N samples (the per-pixel uncertainty map).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        magnitude_key: str = "magnitude",
        complex_key: str = "complex",
        spread_key: str = "phase_spread",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.magnitude_key, self.complex_key, self.spread_key = magnitude_key, complex_key, spread_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            phase = torch.as_tensor(d[key]).detach().cpu().as_subclass(torch.Tensor)
            magnitude = torch.as_tensor(d[self.magnitude_key]).detach().cpu().as_subclass(torch.Tensor)
            d[self.complex_key] = apply_phase(magnitude, phase)
            d[self.spread_key] = circular_variance(phase, dim=0)[None]
        return d
