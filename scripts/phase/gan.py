"""pix2pix (Isola et al., CVPR 2017) as the conditional-GAN baseline for p(phase | magnitude).

The published method, mapped onto this bundle:

Generator (:class:`Pix2PixGenerator`)
    The pix2pix U-Net: ``n`` down levels of 4x4 stride-2 convolutions
    (C64-C128-C256-C512-C512-...; LeakyReLU 0.2, no norm on the first and innermost levels),
    mirrored by 4x4 stride-2 transposed convolutions (ReLU) with skip connections, dropout
    0.5 on the three decoder levels just outside the innermost one, tanh output.
    ``n = 8`` at 256x256 (1x1 bottleneck). :func:`pix2pix_depth` derives ``n`` from the image
    size: the largest ``n <= 8`` with both sides divisible by ``2**n`` (32x32: 5 levels,
    320x320: 6 levels with a 5x5 bottleneck); other sizes are zero-padded (zero = background)
    to a multiple of ``2**n`` inside :meth:`Pix2PixGenerator.forward` and cropped back.

    Input: the normalised magnitude (1 channel, :mod:`scripts.core.intensity`). Output: the unit
    phasor ``(cos phi, sin phi)`` through tanh (2 channels), the same representation as the
    diffusion model (:mod:`scripts.phase.diffusion`): phase is circular, the phasor has no false
    edge at +-pi, lies in tanh's [-1, 1], and ``phi = atan2(sin, cos)`` for any length.

    Why not ``monai.networks.nets.UNet``/``BasicUNet``: they cannot express this network.
    MONAI's ``same_padding`` rejects the even 4x4 kernels; its UNet puts a norm layer in the
    bottom block, which fails on a 1x1 bottleneck at batch size 1 (BatchNorm needs more
    than one value per channel; InstanceNorm of one value is 0); dropout is all-or-nothing
    over the layers; there is no tanh head. The network here is ~60 lines of plain torch.

    Normalisation: pix2pix trains AND tests with BatchNorm in training mode at batch size 1,
    which is exactly instance normalisation with learned affine parameters. We use
    ``InstanceNorm2d(affine=True)`` so that slices batched at inference give the same result
    as one at a time. Dropout stays on at inference (pix2pix's only noise source): the
    ``gan`` phase source seeds it, so different seeds give different samples.

Discriminator
    The 70x70 PatchGAN: ``monai.networks.nets.PatchDiscriminator`` with 3 layers
    (C64-C128-C256-C512, 4x4 kernels, BatchNorm, LeakyReLU 0.2; 30x30 logits at 256x256),
    conditioned by concatenating the magnitude to the (real or generated) phasor: 3 input
    channels. Its last output is the logit map.

Loss (:class:`Pix2PixLoss`)
    The published objective: conditional adversarial loss with the "vanilla" GAN criterion,
    binary cross-entropy on logits (``BCEWithLogitsLoss``; ``gan_mode="lsgan"`` switches to
    least squares), + 100 x L1 between generated and true phasor. The discriminator loss is
    halved, as in pix2pix ("slows down the rate at which D learns relative to G").
    Optimisers: Adam, lr 2e-4, betas (0.5, 0.999), batch size 1 (in ``configs/train_gan.json``);
    the rate stays constant for the first half of ``max_epochs`` and decays linearly to 0 over
    the second (pix2pix's 100 + 100 epochs; :class:`Pix2PixLrSchedule`).
    Weights start N(0, 0.02) (norm weights N(1, 0.02)), pix2pix's ``init_type="normal"``.

Engine (:class:`Pix2PixTrainer`)
    ``monai.engines.GanTrainer`` is built for unconditional GANs: its generator input comes
    from ``g_prepare_batch(num_latents, latent_size, ...)`` (random latents, never the
    batch), ``g_loss_function(fakes)`` sees neither the condition nor the target (no L1 term
    possible), and ``d_loss_function(fakes, reals)`` does not see the condition (the
    discriminator could not be conditional). So :class:`Pix2PixTrainer` subclasses
    ``GanTrainer`` (keeping its constructor, handlers, metrics, state and ``GanKeys``
    outputs) and replaces only ``_iteration`` with the conditional pix2pix step.

Training (``python -m monai.bundle run training --config_file configs/train_gan.json``)
    Same slices and transforms as the diffusion training (``configs/train.json``:
    :class:`scripts.phase.data.LoadPhaseSliced`, ``NormalizeMagnituded``, random
    left-right flips; ``--dataset_dir`` picks the data). Full checkpoints (both networks,
    both optimisers, engine state) every epoch in ``models/gan/``; the generator with the
    best validation phase coherence in ``models/gan/generator.pt`` (what the ``gan`` phase
    source loads); a rerun resumes from the newest readable checkpoint (``CheckpointLoader``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.engines import GanTrainer
from monai.utils import GanKeys
from torch import nn

__all__ = [
    "MAX_DEPTH",
    "PhaseCoherence",
    "coherence_inputs",
    "Pix2PixGenerator",
    "Pix2PixLoss",
    "Pix2PixLrSchedule",
    "Pix2PixPrepareBatch",
    "Pix2PixTrainer",
    "init_weights",
    "linear_decay",
    "load_generator",
    "loss_scalars",
    "patch_discriminator",
    "pix2pix_depth",
]

MAX_DEPTH = 8
"""pix2pix's U-Net depth at 256x256 (a 1x1 bottleneck); never deeper."""


def pix2pix_depth(image_size: int | Sequence[int], max_depth: int = MAX_DEPTH) -> int:
    """Down levels of the U-Net for an image size: the largest ``n <= max_depth`` with every
    side divisible by ``2**n`` (256 -> 8, 128 -> 7, 64 -> 6, 32 -> 5, 320 -> 6, 100 -> 2).
    At least 1."""
    sizes = [int(image_size)] * 2 if np.isscalar(image_size) else [int(s) for s in image_size]
    n = 1
    while n < max_depth and all(s % 2 ** (n + 1) == 0 for s in sizes):
        n += 1
    return n


def _channels(depth: int, ngf: int) -> list[int]:
    return [ngf * min(2**i, 8) for i in range(depth)]


class Pix2PixGenerator(nn.Module):
    """The pix2pix U-Net generator (see the module docstring).

    Args:
        in_channels: condition channels (1: the normalised magnitude).
        out_channels: output channels (2: the unit phasor, through tanh).
        depth: down levels (:func:`pix2pix_depth` of the training image size).
        ngf: filters of the first level (64 in pix2pix).
        dropout: dropout on the three decoder levels just outside the innermost one.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, depth: int = MAX_DEPTH, ngf: int = 64,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth, self.in_channels, self.out_channels, self.ngf = int(depth), in_channels, out_channels, ngf
        ch = _channels(depth, ngf)
        down, up = [], []
        for i in range(depth):
            c_in = in_channels if i == 0 else ch[i - 1]
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(c_in, ch[i], 4, 2, 1, bias=False))
            if 0 < i < depth - 1:
                layers.append(nn.InstanceNorm2d(ch[i], affine=True))
            down.append(nn.Sequential(*layers))
        for i in range(depth):
            c_in = ch[i] if i == depth - 1 else 2 * ch[i]
            c_out = out_channels if i == 0 else ch[i - 1]
            layers = [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=i == 0)]
            if i == 0:
                layers.append(nn.Tanh())
            else:
                layers.append(nn.InstanceNorm2d(c_out, affine=True))
                if max(1, depth - 4) <= i <= depth - 2 and dropout > 0:
                    layers.append(nn.Dropout(dropout))
            up.append(nn.Sequential(*layers))
        self.down, self.up = nn.ModuleList(down), nn.ModuleList(up)
        init_weights(self)

    @property
    def divisor(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k = self.divisor
        ph, pw = (-h) % k, (-w) % k
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        x = self.up[-1](skips[-1])
        for i in range(self.depth - 2, -1, -1):
            x = self.up[i](torch.cat((skips[i], x), dim=1))
        if ph or pw:
            x = x[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        return x


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix's ``init_type="normal"``: conv weights N(0, gain), norm weights N(1, gain), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


def patch_discriminator(in_channels: int = 3, channels: int = 64, num_layers_d: int = 3) -> nn.Module:
    """The 70x70 PatchGAN (MONAI ``PatchDiscriminator``, 3 layers), pix2pix initialisation."""
    from monai.networks.nets import PatchDiscriminator

    return init_weights(PatchDiscriminator(spatial_dims=2, channels=channels, in_channels=in_channels,
                                           out_channels=1, num_layers_d=num_layers_d, kernel_size=4, norm="BATCH"))


def _logits(d_out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``PatchDiscriminator`` returns every layer's features: the last one is the logit map."""
    return d_out[-1] if isinstance(d_out, (list, tuple)) else d_out


class Pix2PixLoss:
    """pix2pix objective: conditional adversarial loss + ``lambda_l1`` x L1.

    ``gan_mode="vanilla"`` (the paper): BCE on logits; ``"lsgan"``: least squares.
    """

    def __init__(self, lambda_l1: float = 100.0, gan_mode: str = "vanilla") -> None:
        if gan_mode not in ("vanilla", "lsgan"):
            raise ValueError(f"gan_mode must be 'vanilla' or 'lsgan', got {gan_mode!r}")
        self.lambda_l1, self.gan_mode = float(lambda_l1), gan_mode
        self.criterion = nn.BCEWithLogitsLoss() if gan_mode == "vanilla" else nn.MSELoss()

    def adversarial(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        return self.criterion(logits, torch.full_like(logits, 1.0 if real else 0.0))

    def discriminator(self, d_fake: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.adversarial(_logits(d_fake), False) + self.adversarial(_logits(d_real), True))

    def generator(self, d_fake: torch.Tensor, fake: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        adv = self.adversarial(_logits(d_fake), True)
        l1 = F.l1_loss(fake, target)
        return adv + self.lambda_l1 * l1, adv, l1


class Pix2PixPrepareBatch:
    """``batch -> (condition, target)``: the normalised magnitude and the true phasor."""

    def __init__(self, condition_key: str = "magnitude", target_key: str = "image") -> None:
        self.condition_key, self.target_key = condition_key, target_key

    def __call__(self, batchdata: dict, device: Any = None, non_blocking: bool = False, **kwargs: Any):
        def move(t):
            t = torch.as_tensor(t)
            t = t.as_subclass(torch.Tensor) if hasattr(t, "as_subclass") else t
            return t.to(device=device, non_blocking=non_blocking, **kwargs)

        return move(batchdata[self.condition_key]), move(batchdata[self.target_key])


class Pix2PixTrainer(GanTrainer):
    """``GanTrainer`` with the conditional pix2pix step (why: see the module docstring).

    One iteration: G(magnitude) -> fake phasor; D step on (magnitude, real) vs
    (magnitude, fake.detach()); G step on adversarial(D(magnitude, fake)) + lambda x L1.
    Output: ``GanKeys`` REALS/FAKES/LATENTS(= the condition)/GLOSS/DLOSS plus ``adv_loss``
    and ``l1_loss`` (floats).

    Args beyond ``GanTrainer``'s: ``loss`` (a :class:`Pix2PixLoss`); ``prepare_batch`` (a
    :class:`Pix2PixPrepareBatch`). ``g_loss_function``/``d_loss_function`` are set from ``loss``.
    """

    def __init__(self, device, max_epochs: int, train_data_loader, g_network: nn.Module, g_optimizer,
                 d_network: nn.Module, d_optimizer, loss: Pix2PixLoss | None = None,
                 prepare_batch: Pix2PixPrepareBatch | None = None, **kwargs: Any) -> None:
        loss = loss or Pix2PixLoss()
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader,
                         g_network=g_network, g_optimizer=g_optimizer, g_loss_function=loss.generator,
                         d_network=d_network, d_optimizer=d_optimizer, d_loss_function=loss.discriminator,
                         d_prepare_batch=prepare_batch or Pix2PixPrepareBatch(), **kwargs)
        self.loss = loss

    def _iteration(self, engine: Pix2PixTrainer, batchdata: dict) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        cond, real = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.g_network.train()
        engine.d_network.train()
        fake = engine.g_inferer(cond, engine.g_network)

        # discriminator: real pairs -> 1, generated pairs -> 0 (generator frozen by detach)
        d_total = 0.0
        for _ in range(engine.d_train_steps):
            engine.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            d_fake = engine.d_inferer(torch.cat((cond, fake.detach()), 1), engine.d_network)
            d_real = engine.d_inferer(torch.cat((cond, real), 1), engine.d_network)
            d_loss = engine.loss.discriminator(d_fake, d_real)
            d_loss.backward()
            engine.d_optimizer.step()
            d_total += d_loss.item()

        # generator: fool the (just updated) discriminator + stay close to the target in L1
        engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        d_fake = engine.d_inferer(torch.cat((cond, fake), 1), engine.d_network)
        g_loss, adv, l1 = engine.loss.generator(d_fake, fake, real)
        g_loss.backward()
        engine.g_optimizer.step()
        return {
            GanKeys.REALS: real,
            GanKeys.FAKES: fake.detach(),
            GanKeys.LATENTS: cond,
            GanKeys.GLOSS: g_loss.item(),
            GanKeys.DLOSS: d_total / max(engine.d_train_steps, 1),
            "adv_loss": adv.item(),
            "l1_loss": l1.item(),
        }


def coherence_inputs(output: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pred, label, image)`` stacked from an evaluator output (a decollated list of dicts or a dict)."""
    keys = ("pred", "label", "image")
    if isinstance(output, dict):
        return tuple(torch.as_tensor(output[k]) for k in keys)  # type: ignore[return-value]
    return tuple(torch.stack([torch.as_tensor(o[k]) for o in output]) for k in keys)  # type: ignore[return-value]


class PhaseCoherence(Metric):
    """Ignite metric: mean over slices of |sum_i w_i exp(i(phi_hat_i - phi_i))| / sum_i w_i.

    ``output_transform`` (default :func:`coherence_inputs`) must give ``(pred_phasor,
    true_phasor, weight)`` as batched tensors (phasor channels first); ``w`` is the
    magnitude. 1 = the same phase up to a constant offset (the definition of
    ``scripts.phase.metrics.phase_coherence``).
    """

    def __init__(self, output_transform=coherence_inputs, device: Any = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._num = 0

    @reinit__is_reduced
    def update(self, output: Sequence) -> None:
        pred, true, weight = output
        pred, true = pred.detach().double(), true.detach().double()
        w = weight.detach().double().reshape(pred.shape[0], -1)
        zp = torch.complex(pred[:, 0], pred[:, 1]).reshape(pred.shape[0], -1)
        zt = torch.complex(true[:, 0], true[:, 1]).reshape(true.shape[0], -1)
        rel = zp / zp.abs().clamp_min(1e-12) * torch.conj(zt / zt.abs().clamp_min(1e-12))
        coh = (w * rel).sum(1).abs() / w.sum(1).clamp_min(1e-12)
        self._sum += coh.sum().to(self._device)
        self._num += coh.numel()

    @sync_all_reduce("_sum", "_num")
    def compute(self) -> float:
        return float(self._sum / max(self._num, 1))


def load_generator(checkpoint: str, map_location: Any = "cpu", **kwargs: Any) -> Pix2PixGenerator:
    """A :class:`Pix2PixGenerator` from a file saved by ``configs/train_gan.json``.

    Accepts the plain generator state dict (``models/gan/generator.pt``) or a full training
    checkpoint holding ``"generator"``; loaded with ``torch.load(..., weights_only=True)``.
    Depth, width and channels are read from the weights (``kwargs`` override, e.g. dropout).
    """
    state = torch.load(checkpoint, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("generator"), dict):
        state = state["generator"]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("down."))
    first = state["down.0.0.weight"]  # (ngf, in_channels, 4, 4)
    last = state["up.0.1.weight"]  # ConvTranspose2d: (in, out, 4, 4)
    args = dict(in_channels=int(first.shape[1]), out_channels=int(last.shape[1]), depth=depth, ngf=int(first.shape[0]))
    args.update(kwargs)
    net = Pix2PixGenerator(**args)
    net.load_state_dict(state)
    return net


def linear_decay(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """pix2pix's learning-rate factor for 0-based ``epoch``: 1 for ``n_epochs`` epochs, then
    linearly down to 0 over ``n_epochs_decay`` more (never below 0)."""
    return max(0.0, 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1))


class Pix2PixLrSchedule:
    """Handler: at every epoch start set the learning rate of ``optimizers`` to
    ``lr * linear_decay(epoch - 1, max_epochs - n_epochs_decay, n_epochs_decay)``.

    The rate is a function of the trainer's epoch alone, so it needs no state in the
    checkpoint and a resumed run (``CheckpointLoader`` restores the epoch) follows the
    schedule of its own config, even with a larger ``max_epochs`` than the first run.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], lr: float, n_epochs_decay: int) -> None:
        self.optimizers, self.lr, self.n_epochs_decay = list(optimizers), float(lr), int(n_epochs_decay)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        total = int(engine.state.max_epochs)
        factor = linear_decay(engine.state.epoch - 1, total - self.n_epochs_decay, self.n_epochs_decay)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = self.lr * factor


def loss_scalars(output: dict) -> dict[str, float]:
    """The scalar losses of a :class:`Pix2PixTrainer` iteration output (for Stats/TensorBoard handlers)."""
    out = output[0] if isinstance(output, (list, tuple)) else output
    return {k: float(out[k]) for k in (GanKeys.GLOSS, GanKeys.DLOSS, "adv_loss", "l1_loss") if k in out}
