"""A one-figure gallery of every phase source on the same magnitude slice.

:func:`make_gallery` reads one slice (any fastMRI-format h5 with ``image_complex``, or
k-space that :func:`scripts.phase.data.complex_slice` can combine), keeps its magnitude,
and asks every phase source (:mod:`scripts.phase.sources`) for a phase, beside the true
phase. Sources that need weights (``diffusion``, ``gan``) are drawn when their checkpoint
path is given and exists, and listed as skipped (with the reason) otherwise. One PNG:

- row 1: phase in (-pi, pi] (cyclic colour map ``twilight``), over the whole FOV;
- row 2: the complex image as colour: hue = phase, brightness = normalised magnitude
  (what the synthetic k-space will contain: background phase is invisible here);
- each title: the source name, phase coherence with the true phase (magnitude-weighted,
  1 = same phase up to a constant) and the median |wrapped phase gradient| in the head
  (rad/pixel; real brain slices: about 0.03-0.05 at 256 pixels).

Run through the bundle: ``python -m monai.bundle run gallery --config_file configs/gallery.json
--output_dir DIR`` (``--gallery_file`` / ``--gallery_slice`` pick the slice,
``--gan_checkpoint`` / ``--diffusion_checkpoint`` the weights).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_SOURCES", "WEIGHTED_SOURCES", "default_slice", "make_gallery"]

logger = logging.getLogger(__name__)

DEFAULT_SOURCES = ("zero", "uniform", "gaussian", "smooth", "sinusoidal", "physics", "gan", "diffusion")
WEIGHTED_SOURCES = ("gan", "diffusion")


def default_slice(dataset_dir: str | os.PathLike, split: str = "test") -> tuple[str, int]:
    """The first file of ``split`` under ``dataset_dir`` and its middle slice."""
    from scripts.io.fastmri_h5 import num_slices
    from scripts.phase.data import _h5_files, find_split

    path = _h5_files(find_split(dataset_dir, split))[0]
    return path, num_slices(path) // 2


def _phase_rgb(phase: np.ndarray, brightness: np.ndarray) -> np.ndarray:
    import matplotlib

    rgb = matplotlib.colormaps["twilight"]((phase + np.pi) / (2 * np.pi))[..., :3]
    return np.clip(rgb * brightness[..., None], 0.0, 1.0)


def make_gallery(
    output_dir: str | os.PathLike,
    file: str | os.PathLike | None = None,
    slice_index: int | None = None,
    dataset_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = DEFAULT_SOURCES,
    checkpoints: Mapping[str, str | None] | None = None,
    source_kwargs: Mapping[str, Mapping] | None = None,
    seed: int = 0,
    filename: str = "phase_gallery.png",
    dpi: int = 110,
) -> str:
    """Write ``output_dir/filename`` (see the module docstring) and return its path.

    Args:
        output_dir: folder of the PNG (created).
        file, slice_index: the slice; default :func:`default_slice` of ``dataset_dir``'s test split.
        dataset_dir: used when ``file`` is not given.
        sources: phase-source names, in panel order (the true phase comes first).
        checkpoints: ``{"gan": path, "diffusion": path}``; a missing/``None``/absent path skips the source.
        source_kwargs: extra constructor arguments per source name.
        seed: the seed every source gets.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scripts.core.intensity import normalize_magnitude
    from scripts.phase.data import complex_slice
    from scripts.core.physics import head_mask
    from scripts.phase.metrics import phase_coherence, wrapped_phase_gradients
    from scripts.phase.sources import get_phase_source

    if file is None:
        if dataset_dir is None:
            raise ValueError("give a file (and slice) or a dataset_dir")
        file, default_index = default_slice(dataset_dir)
        slice_index = default_index if slice_index is None else slice_index
    slice_index = 0 if slice_index is None else int(slice_index)
    z = complex_slice(file, slice_index)
    magnitude = np.abs(z).astype(np.float32)
    mask = head_mask(magnitude)
    brightness = np.clip(normalize_magnitude(magnitude)[0], 0.0, 1.0)
    checkpoints = dict(checkpoints or {})
    source_kwargs = dict(source_kwargs or {})

    panels: list[tuple[str, np.ndarray]] = [("true phase", get_phase_source("ground_truth")(magnitude[None], seed, z[None])[0])]
    skipped: list[str] = []
    for name in sources:
        kwargs = dict(source_kwargs.get(name, {}))
        if name in WEIGHTED_SOURCES:
            ckpt = checkpoints.get(name)
            if not ckpt or not os.path.isfile(ckpt):
                skipped.append(f"{name} (no checkpoint{': ' + str(ckpt) if ckpt else ''})")
                logger.warning("gallery: skipped %s: no checkpoint at %s", name, ckpt)
                continue
            kwargs["checkpoint"] = ckpt
        try:
            phase = get_phase_source(name, **kwargs)(magnitude[None], seed)[0]
        except Exception as e:  # one broken source must not lose the whole figure
            skipped.append(f"{name} ({type(e).__name__}: {e})")
            logger.exception("gallery: source %s failed", name)
            continue
        panels.append((name, phase))

    n = len(panels) + 1
    fig, axes = plt.subplots(2, n, figsize=(2.3 * n, 5.4), squeeze=False)
    axes[0, 0].imshow(magnitude, cmap="gray")
    axes[0, 0].set_title("magnitude", fontsize=9)
    axes[1, 0].imshow(mask, cmap="gray")
    axes[1, 0].set_title("head mask", fontsize=9)
    for col, (name, phase) in enumerate(panels, start=1):
        synth = magnitude * np.exp(1j * phase)
        coh = phase_coherence(synth, z)
        grad = np.median(np.abs(wrapped_phase_gradients(synth, mask))) if mask.any() else float("nan")
        im = axes[0, col].imshow(phase, cmap="twilight", vmin=-np.pi, vmax=np.pi, interpolation="nearest")
        axes[0, col].set_title(f"{name}\ncoh {coh:.2f}  |grad| {grad:.3f}", fontsize=9)
        axes[1, col].imshow(_phase_rgb(phase, brightness), interpolation="nearest")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    cbar = fig.colorbar(im, ax=axes[0, :].tolist(), fraction=0.012, pad=0.01, ticks=[-np.pi, 0, np.pi])
    cbar.ax.set_yticklabels(["-pi", "0", "pi"])
    note = f"{Path(file).name}, slice {slice_index}, {magnitude.shape[0]}x{magnitude.shape[1]}, seed {seed}. "
    note += "Row 1: phase (rad). Row 2: hue = phase, brightness = magnitude. coh: phase coherence with the true phase."
    if skipped:
        note += "\nskipped: " + "; ".join(skipped)
    fig.text(0.01, 0.01, note, fontsize=8, va="bottom")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    logger.info("gallery written to %s", path)
    return str(path)
