"""Phase sources: every way the bundle can give a magnitude image a phase, behind one interface.

A phase source is called with a stack of magnitude slices ``(S, H, W)`` (any non-negative
scale: sources that need a fixed scale normalise with :mod:`scripts.core.intensity`) and a seed,
and returns phase ``(S, H, W)`` float32 in ``(-pi, pi]``. Sources that know the truth
(``ground_truth``) also take the complex reference image. Sources are looked up by name so
any config selects one with ``--phase_source NAME``::

    source = get_phase_source("uniform")
    phase = source(magnitude, seed=0)
    image = magnitude * np.exp(1j * phase)        # the magnitude is kept exactly

Random sources draw from ``np.random.default_rng(seed)`` only: the same seed gives the
same phase, and slices of a stack get independent draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from scripts.configs import PRETRAINED_PHASE_MODEL, ROOT
from scripts.core.complex import wrap_phase

__all__ = ["PhaseSource", "PHASE_SOURCES", "get_phase_source", "register_phase_source"]


@runtime_checkable
class PhaseSource(Protocol):
    """``source(magnitude (S,H,W), seed, reference=None) -> phase (S,H,W) float32 in (-pi, pi]``."""

    name: str

    def __call__(self, magnitude: np.ndarray, seed: int, reference: np.ndarray | None = None) -> np.ndarray: ...


PHASE_SOURCES: dict[str, Callable[..., PhaseSource]] = {}


def register_phase_source(name: str):
    """Class decorator: make a phase source constructible by ``get_phase_source(name, **kwargs)``."""

    def deco(cls):
        cls.name = name
        PHASE_SOURCES[name] = cls
        return cls

    return deco


def get_phase_source(name: str, **kwargs) -> PhaseSource:
    """Build the phase source registered under ``name`` (``ValueError`` listing the known names)."""
    if name not in PHASE_SOURCES:
        raise ValueError(f"unknown phase source {name!r}; known: {', '.join(sorted(PHASE_SOURCES))}")
    return PHASE_SOURCES[name](**kwargs)


def _check(magnitude: np.ndarray) -> np.ndarray:
    magnitude = np.asarray(magnitude)
    if magnitude.ndim != 3:
        raise ValueError(f"magnitude must be a stack of slices (S, H, W), got shape {magnitude.shape}")
    return magnitude


@register_phase_source("ground_truth")
class GroundTruthPhase:
    """The phase of the paired complex reference image (the upper bound of the comparison)."""

    def __call__(self, magnitude, seed, reference=None):
        magnitude = _check(magnitude)
        if reference is None or np.shape(reference) != magnitude.shape:
            raise ValueError("ground_truth phase needs the complex reference image of the same shape")
        return wrap_phase(np.angle(reference), np.float32)


@register_phase_source("zero")
class ZeroPhase:
    """Zero phase everywhere: the real-valued-image baseline."""

    def __call__(self, magnitude, seed, reference=None):
        return np.zeros(_check(magnitude).shape, np.float32)


@register_phase_source("uniform")
class UniformPhase:
    """I.i.d. uniform phase in (-pi, pi] per pixel."""

    def __call__(self, magnitude, seed, reference=None):
        shape = _check(magnitude).shape
        return wrap_phase(np.random.default_rng(seed).uniform(-np.pi, np.pi, shape), np.float32)


@register_phase_source("gaussian")
class GaussianPhase:
    """I.i.d. normal phase per pixel, standard deviation ``sigma`` radians (wrapped)."""

    def __init__(self, sigma: float = 1.0) -> None:
        self.sigma = sigma

    def __call__(self, magnitude, seed, reference=None):
        shape = _check(magnitude).shape
        return wrap_phase(np.random.default_rng(seed).normal(0.0, self.sigma, shape), np.float32)


# ----------------------------------------------------------------------------------------
# Procedural baselines: smooth random fields, magnitude-modulated sinusoids, physics.
# Coordinates are in field-of-view units, x, y in [-1, 1], so a source gives the same
# phase structure at every matrix size.
# ----------------------------------------------------------------------------------------


def _fov_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y, x)`` broadcastable coordinates in [-1, 1] over the field of view."""
    return np.linspace(-1.0, 1.0, h)[:, None], np.linspace(-1.0, 1.0, w)[None, :]


def _unit_magnitude(magnitude: np.ndarray) -> np.ndarray:
    """Magnitude scaled by its 99.5th percentile (:mod:`scripts.core.intensity`) and clipped to [0, 1]."""
    from scripts.core.intensity import PERCENTILE

    mag = np.abs(np.asarray(magnitude, dtype=np.float64))
    ref = np.percentile(mag, PERCENTILE)
    if not (np.isfinite(ref) and ref > 0):
        return np.zeros_like(mag)
    return np.clip(mag / ref, 0.0, 1.0)


@register_phase_source("smooth")
class SmoothPhase:
    """Smooth random phase: a random low-order polynomial plus a low-passed random field.

    phi = c0 + P(x, y) + F(x, y), per slice, with (x, y) in [-1, 1] over the field of view:

    - ``c0`` uniform in [-pi, pi): the receiver's arbitrary constant phase;
    - ``P``: sum of monomials x^i y^j, 1 <= i + j <= ``order`` (default 3), coefficients
      N(0, 1/(i+j)), mean-removed and rescaled so that its peak-to-peak over the FOV is
      uniform in ``poly_span`` rad (default 1 to 8 rad: the real brain slices in the shared
      data show 1.5 to 8 rad between the 2nd and 98th percentiles of unwrapped phase inside
      the head, and about 0.03 rad/pixel median gradient at 256 pixels);
    - ``F``: white noise filtered by a Gaussian of standard deviation ``field_sigma`` of the
      FOV (default 0.08, about 20 pixels at 256), rescaled to standard deviation uniform in
      ``field_std`` rad (default 0.2 to 0.8 rad): the non-polynomial smooth structure.

    The phase is not masked: over the background (no signal) it is as smooth as inside.
    """

    def __init__(
        self,
        order: int = 3,
        poly_span: tuple[float, float] = (1.0, 8.0),
        field_sigma: float = 0.08,
        field_std: tuple[float, float] = (0.2, 0.8),
    ) -> None:
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.order, self.poly_span, self.field_sigma, self.field_std = int(order), poly_span, field_sigma, field_std

    def one(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        h, w = shape
        y, x = _fov_grid(h, w)
        poly = np.zeros((h, w))
        for deg in range(1, self.order + 1):
            for i in range(deg + 1):
                poly = poly + rng.normal(0.0, 1.0 / np.sqrt(deg)) * x**i * y ** (deg - i)
        poly -= poly.mean()
        span = np.ptp(poly)
        poly *= rng.uniform(*self.poly_span) / span if span > 0 else 0.0
        field = gaussian_filter(rng.normal(size=(h, w)), sigma=(self.field_sigma * h, self.field_sigma * w), mode="wrap")
        std = field.std()
        field *= rng.uniform(*self.field_std) / std if std > 0 else 0.0
        return rng.uniform(-np.pi, np.pi) + poly + field

    def __call__(self, magnitude, seed, reference=None):
        magnitude = _check(magnitude)
        rng = np.random.default_rng(seed)
        return wrap_phase(np.stack([self.one(m.shape, rng) for m in magnitude]), np.float32)


@register_phase_source("sinusoidal")
class SinusoidalPhase:
    """Magnitude-modulated sinusoids, the literature's "sinusoidal phase" baseline.

    phi = A * (sin(2 pi f_x u + b) + cos(2 pi f_y v + d)) * m + n, per slice, where

    - (u, v) in [0, 1] across the field of view, ``f_x``, ``f_y`` uniform in ``freq``
      cycles per FOV (default 0.5 to 2), ``b``, ``d`` uniform in [0, 2 pi);
    - ``A`` uniform in ``amplitude`` rad (default 0.5 to 1.5; |phi| <= 2 A: at most 3 rad,
      a span of up to 6 rad, the range of real brain phase);
    - ``m`` the magnitude divided by its 99.5th percentile, clipped to [0, 1], so the phase
      follows the anatomy and vanishes where there is no signal;
    - ``n`` i.i.d. N(0, ``noise_std``^2), default 0.05 rad ("small noise").

    Draw order is fixed (frequencies, offsets, amplitude, noise), so the same seed gives the
    same carrier for any magnitude.
    """

    def __init__(
        self,
        freq: tuple[float, float] = (0.5, 2.0),
        amplitude: tuple[float, float] = (0.5, 1.5),
        noise_std: float = 0.05,
    ) -> None:
        self.freq, self.amplitude, self.noise_std = freq, amplitude, noise_std

    def one(self, magnitude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = magnitude.shape
        fx, fy = rng.uniform(*self.freq, 2)
        b, d = rng.uniform(0.0, 2 * np.pi, 2)
        amp = rng.uniform(*self.amplitude)
        noise = rng.normal(0.0, self.noise_std, (h, w)) if self.noise_std > 0 else 0.0
        u, v = np.arange(w)[None, :] / w, np.arange(h)[:, None] / h
        carrier = amp * (np.sin(2 * np.pi * fx * u + b) + np.cos(2 * np.pi * fy * v + d))
        return carrier * _unit_magnitude(magnitude) + noise

    def __call__(self, magnitude, seed, reference=None):
        magnitude = _check(magnitude)
        rng = np.random.default_rng(seed)
        return wrap_phase(np.stack([self.one(m, rng) for m in magnitude]), np.float32)


@register_phase_source("physics")
class PhysicsPhase:
    """Physics baseline: tissue/air segmentation -> susceptibility -> dipole B0 phase + RF phase.

    Per slice, with every physical step taken from :mod:`scripts.core.physics` (no second copy):

    1. :func:`~scripts.core.physics.segment_head` splits the magnitude into head / air outside,
       and bright tissue / dark pixels inside (threshold ``threshold`` of the 99th
       percentile). Dark pixels inside the head are ambiguous in a magnitude image (sinus
       air, bone, flow voids, but also CSF in FLAIR): those within ``dark_depth`` (default
       0.3) of the head's inscribed radius from its edge (skull, sinuses, mastoids, ear
       canals) are a mixture of air, fraction ``f_air`` uniform in ``dark_air_fraction``
       (default 0 to 1), and cortical bone; deeper dark pixels (ventricles) are water.
    2. :func:`~scripts.core.physics.susceptibility_map` with :data:`~scripts.core.physics.CHI_PPM`
       (ppm relative to water: air +9.4, bone -2.0, tissue 0).
    3. The slice becomes a 3-D head (:func:`~scripts.core.physics.slab_from_mask`: the head mask
       rounded off above and below like a sphere; air around it), so that the field has
       the structure of a finite head. The field
       (:func:`~scripts.core.physics.field_from_susceptibility`, dipole kernel, 2x zero padding,
       air outside) is computed on a grid of at most ``field_size`` pixels per side
       (default 64; the field is smooth away from boundaries) and interpolated back.
       B0 is tilted from the slice normal by U(0, ``max_tilt_deg``) degrees (default 15,
       the simulator's head pitch/roll) in a random direction.
    4. Scanner shim: :func:`~scripts.core.physics.shim` removes a polynomial fit of order
       ``shim_order`` (default 2) inside the head; then a residual offset N(0, 0.03) ppm and
       linear gradient up to 0.05 ppm across half the FOV are added (as the simulator).
    5. :func:`~scripts.core.physics.b0_phase` at B0 = 3 T (probability 0.6) or 1.5 T and echo time
       U(``te_ms``) (default 2 to 15 ms: T1 gradient echoes to T2*-weighted GRE), plus
       :func:`~scripts.core.physics.rf_phase` (smooth, quadratic; its documented ranges) when ``rf``.

    Outside the head the (smooth) field and RF phase continue; the magnitude there is
    near zero, so what it multiplies is the noise floor.
    """

    def __init__(
        self,
        te_ms: tuple[float, float] = (2.0, 15.0),
        b0_t: tuple[float, ...] = (1.5, 3.0),
        p_3t: float = 0.6,
        max_tilt_deg: float = 15.0,
        dark_air_fraction: tuple[float, float] = (0.0, 1.0),
        dark_depth: float = 0.3,
        threshold: float = 0.08,
        field_size: int = 64,
        shim_order: int = 2,
        rf: bool = True,
    ) -> None:
        self.te_ms, self.b0_t, self.p_3t = te_ms, tuple(b0_t), p_3t
        self.max_tilt_deg, self.dark_air_fraction, self.threshold = max_tilt_deg, dark_air_fraction, threshold
        self.dark_depth = dark_depth
        self.field_size, self.shim_order, self.rf = int(field_size), int(shim_order), rf

    def field_ppm(self, magnitude: np.ndarray, b0_dir: np.ndarray, f_air: float) -> tuple[np.ndarray, np.ndarray]:
        """Un-shimmed relative field (ppm) of one 2-D magnitude slice, and its head mask."""
        from scipy import ndimage as ndi

        from scripts.core import physics

        seg = physics.segment_head(magnitude, threshold=self.threshold)
        h, w = magnitude.shape
        scale = min(1.0, self.field_size / max(h, w))
        small = (max(2, round(h * scale)), max(2, round(w * scale)))

        def resize(x: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
            if x.shape == shape:
                return x
            if shape[0] < x.shape[0]:  # anti-alias before decimating
                x = ndi.gaussian_filter(x, (0.5 * x.shape[0] / shape[0], 0.5 * x.shape[1] / shape[1]))
            zoom = (shape[0] / x.shape[0], shape[1] / x.shape[1])
            return ndi.zoom(x, zoom, order=order, mode="nearest", grid_mode=True)

        depth = ndi.distance_transform_edt(seg["head"])
        outer_dark = seg["dark"] & (depth <= self.dark_depth * depth.max())
        head = resize(seg["head"].astype(np.float64), small) > 0.5
        dark = np.clip(resize(outer_dark.astype(np.float64), small), 0.0, 1.0) * head
        chi2d = physics.susceptibility_map(
            {"air": (~head).astype(np.float32) + f_air * dark, "bone": (1.0 - f_air) * dark}
        )
        if head.any():
            radius = float(ndi.distance_transform_edt(head).max())
            half = int(np.ceil(radius)) + 1
            slab = physics.slab_from_mask(head, half, radius)
            chi3d = np.where(slab, chi2d[None], np.float32(physics.CHI_PPM["air"]))
            field = physics.field_from_susceptibility(chi3d, b0_dir, background=physics.CHI_PPM["air"])[half]
        else:
            field = np.zeros(small, np.float32)
        return resize(field.astype(np.float64), (h, w), order=3), seg["head"]

    def one(self, magnitude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scripts.core import physics

        te_s = rng.uniform(*self.te_ms) * 1e-3
        b0 = self.b0_t[-1] if rng.random() < self.p_3t else self.b0_t[0]
        tilt, azimuth = np.deg2rad(rng.uniform(0.0, self.max_tilt_deg)), rng.uniform(0.0, 2 * np.pi)
        b0_dir = np.array([np.cos(tilt), np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth)])
        f_air = rng.uniform(*self.dark_air_fraction)
        offset = rng.normal(0.0, 0.03)
        grad = rng.normal(size=2) / np.sqrt(2) * rng.uniform(0.0, 0.05)
        field, head = self.field_ppm(np.abs(magnitude), b0_dir, f_air)
        if head.any() and self.shim_order >= 0:
            field = physics.shim(field, head, order=self.shim_order)
        y, x = _fov_grid(*magnitude.shape)
        field = field + offset + grad[0] * y + grad[1] * x
        phase = physics.b0_phase(field, te_s, b0)
        if self.rf:
            phase = phase + physics.rf_phase(magnitude.shape, rng)
        return phase

    def __call__(self, magnitude, seed, reference=None):
        magnitude = _check(magnitude)
        rng = np.random.default_rng(seed)
        return wrap_phase(np.stack([self.one(m, rng) for m in magnitude]), np.float32)


# ----------------------------------------------------------------------------------------
# Learned sources: the conditional diffusion model and the pix2pix GAN baseline.
# Weights are loaded once (torch.load(..., weights_only=True)); the GPU is used when there
# is one. Magnitudes are normalised per slice (scripts.core.intensity), as in training.
# ----------------------------------------------------------------------------------------


def _checkpoint(path, default: str) -> str:
    """``path``, or the bundle's default weights file ``default`` (relative to the bundle root)."""
    from pathlib import Path

    p = Path(path) if path else ROOT / default
    if not p.is_file():
        raise FileNotFoundError(f"no weights at {p}: train the model first or pass checkpoint=PATH")
    return str(p)


class _NetworkSource:
    """Shared plumbing of the learned sources: device, per-slice normalisation, batching, and bf16 autocast of
    the network (``amp``; default on CUDA only, so CPU numbers stay float32)."""

    def __init__(self, device=None, batch_size: int = 8, amp: bool | None = None) -> None:
        import torch

        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = int(batch_size)
        self.amp = self.device.type == "cuda" if amp is None else bool(amp)

    @staticmethod
    def _normalised(magnitude: np.ndarray):
        import torch

        from scripts.core.intensity import normalize_magnitude

        out = np.zeros(magnitude.shape, np.float32)
        for i, m in enumerate(np.abs(magnitude).astype(np.float32)):
            try:
                out[i] = normalize_magnitude(m)[0]
            except ValueError:  # an empty (all-zero) slice stays zero: background
                pass
        return torch.from_numpy(out)[:, None]  # (S, 1, H, W)

    def _phase_batch(self, batch, seed: int):  # (B,1,H,W) on device -> (B,H,W) phase tensor
        raise NotImplementedError

    def __call__(self, magnitude, seed, reference=None):
        import torch

        magnitude = _check(magnitude)
        x = self._normalised(magnitude)
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                batch_seed = int(np.random.SeedSequence([int(seed), start]).generate_state(1)[0])
                batch = x[start : start + self.batch_size].to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    phase = self._phase_batch(batch, batch_seed)
                out.append(phase.float().cpu().numpy())
        return wrap_phase(np.concatenate(out), np.float32) if out else np.zeros(magnitude.shape, np.float32)


@register_phase_source("diffusion")
class DiffusionPhase(_NetworkSource):
    """Phase sampled from the conditional diffusion model (:mod:`scripts.phase.diffusion`).

    Args:
        checkpoint: a plain state dict or a full training checkpoint holding ``"model"``
            (default: the shipped model, ``scripts.configs.PRETRAINED_PHASE_MODEL`` under the
            bundle root); loaded once with ``torch.load(..., weights_only=True)``.
        network: the network (an ``nn.Module``); default: ``configs/common.json#network_def``.
        scheduler: a MONAI scheduler object, or a name in ``configs/common.json#schedulers``
            (``"ddpm"``, ``"ddim"``, ``"rflow"``); default: ``configs/common.json#sampler``.
        num_inference_steps: sampling steps (default: ``configs/common.json#num_inference_steps``
            when the scheduler comes from there, else the scheduler's training steps).
        batch_size: slices sampled at once. ``device``: default GPU when available. ``amp``: bf16 autocast
            of the network (default: on CUDA only).
        network_overrides: config ids set before ``network_def`` is built, e.g. the
            ``{"unet_channels": [16, 32, 32]}`` a model was trained with (JSON, so it can be
            recorded in a synthesis manifest).

    Each batch of slices is sampled through one :class:`scripts.phase.diffusion.PhaseSamplingInferer`
    call with a seed derived from ``(seed, first slice index)``.
    """

    def __init__(self, checkpoint: str | None = None, network=None, scheduler=None, num_inference_steps: int | None = None,
                 batch_size: int = 8, device=None, config_file: str = "common.json",
                 network_overrides: dict | None = None, amp: bool | None = None) -> None:
        super().__init__(device, batch_size, amp)
        from scripts.configs import parsed
        from scripts.io.checkpoint import load_weights
        from scripts.phase.diffusion import PhaseSamplingInferer

        overrides = dict(network_overrides or {})
        if network is None:
            network = parsed(config_file, "network_def", **overrides)
        if scheduler is None or isinstance(scheduler, str):
            name = scheduler or parsed(config_file, "sampler_type", **overrides)
            if num_inference_steps is None and scheduler is None:
                num_inference_steps = int(parsed(config_file, "num_inference_steps", **overrides))
            scheduler = parsed(config_file, f"schedulers#{name}", **overrides)
        self.network = load_weights(network, _checkpoint(checkpoint, PRETRAINED_PHASE_MODEL), map_location="cpu").to(self.device).eval()
        self.inferer = PhaseSamplingInferer(scheduler, num_inference_steps=num_inference_steps, num_samples=1,
                                            seed=None, output="phase", sample_batch_size=self.batch_size)

    def _phase_batch(self, batch, seed):
        return self.inferer(batch, self.network, seed=seed)[:, 0]


@register_phase_source("gan")
class GanPhase(_NetworkSource):
    """Phase from the pix2pix generator (:mod:`scripts.phase.gan`): ``atan2`` of its phasor output.

    Args:
        checkpoint: the generator state dict (``models/gan/generator.pt``, the best
            validation phase coherence of ``configs/train_gan.json``; the default, under the
            bundle root) or a full training checkpoint holding ``"generator"``; loaded once
            with ``torch.load(..., weights_only=True)``.
        dropout: keep dropout on at inference (pix2pix's only noise source, as in the paper):
            different seeds then give different phase; ``False`` gives the deterministic
            point estimate for every seed.
        batch_size, device, amp: as :class:`DiffusionPhase`.
    """

    def __init__(self, checkpoint: str | None = None, dropout: bool = True, batch_size: int = 8, device=None,
                 amp: bool | None = None) -> None:
        super().__init__(device, batch_size, amp)
        import torch

        from scripts.phase.gan import load_generator

        self.network = load_generator(_checkpoint(checkpoint, "models/gan/generator.pt")).to(self.device).eval()
        self.dropout = dropout
        if dropout:
            for m in self.network.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.train()

    def _phase_batch(self, batch, seed):
        import torch

        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            phasor = self.network(batch).float()  # the network may run in bf16 (amp); the angle in float32
        return torch.atan2(phasor[:, 1], phasor[:, 0])
