"""The model zoo's CI checks (Project-MONAI/model-zoo ``ci/verify_bundle.py``) on a built bundle.

Run as the zoo runs them, on ``models/<bundle>`` with ``bundle_root`` set to that path (relative to
the zoo's root folder there; any path works here):

- ``verify_metadata``: ``configs/metadata.json`` against the schema it names, read from the copy the
  project keeps in ``configs/schema/`` (nothing is downloaded);
- ``verify_net_in_out``: ``network_def`` of ``configs/inference.json`` on fake data shaped by
  ``network_data_format``, with ``extra_forward_args={"timesteps": ...}`` (a diffusion UNet's forward
  needs the step, as for the zoo's other diffusion bundles);
- ``ckpt_export``: TorchScript export of ``models/model.pt``. ``DiffusionModelUNet`` does not script
  (its attention blocks reshape with shapes TorchScript cannot type); a failure raised inside
  ``torch.jit`` is reported as ``excluded`` with its reason: the bundle then belongs in
  ``exclude_verify_torchscript_list`` of the zoo's ``ci/bundle_custom_data.py``. (The zoo's own CI calls
  ``verify_net_in_out`` without ``extra_forward_args``: there the bundle, like the zoo's other diffusion
  bundles, belongs in ``exclude_verify_shape_list`` too.)
- ``preferred_files``: the files the zoo requires or prefers, and ``docs/README.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from scripts.configs import CONFIG_DIR

__all__ = ["CHECKS", "FILES", "describe", "run_checks", "schema_file"]

NET_ID = "network_def"
META = os.path.join("configs", "metadata.json")
INFERENCE = os.path.join("configs", "inference.json")
FILES = (META, "LICENSE", os.path.join("models", "model.pt"), INFERENCE, os.path.join("docs", "README.md"))
TORCHSCRIPT_LIST = "exclude_verify_torchscript_list"
ForwardArgs = Callable[[str], dict]
SHAPE_LIST = "exclude_verify_shape_list"


def schema_file(meta_file: str | os.PathLike) -> Path:
    """The project's copy of the schema ``meta_file`` names (``configs/schema/<file name of its URL>``)."""
    url = json.loads(Path(meta_file).read_text(encoding="utf-8"))["schema"]
    path = CONFIG_DIR / "schema" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise FileNotFoundError(f"schema {url} is not kept in configs/schema/ (it is never downloaded)")
    return path


def timestep_args(device: str) -> dict[str, torch.Tensor]:
    """The keyword argument a diffusion UNet's forward needs besides its input."""
    return {"timesteps": torch.zeros(1, dtype=torch.long, device=device)}


def _verify_metadata(bundle: str, forward_args: ForwardArgs) -> None:
    from monai.bundle import verify_metadata

    meta = os.path.join(bundle, META)
    with warnings.catch_warnings():  # the kept schema has no published hash to check it against
        warnings.filterwarnings("ignore", message="No hash value provided")
        verify_metadata(meta_file=meta, filepath=str(schema_file(meta)))


def _verify_net_in_out(bundle: str, forward_args: ForwardArgs) -> None:
    from monai.bundle import verify_net_in_out

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    verify_net_in_out(net_id=NET_ID, meta_file=os.path.join(bundle, META), config_file=os.path.join(bundle, INFERENCE),
                      device=device, extra_forward_args=forward_args(device), bundle_root=bundle)


def _ckpt_export(bundle: str, forward_args: ForwardArgs) -> None:
    from monai.bundle import ckpt_export

    with tempfile.TemporaryDirectory() as tmp:
        ckpt_export(net_id=NET_ID, filepath=os.path.join(tmp, "verify_model.ts"),
                    ckpt_file=os.path.join(bundle, "models", "model.pt"), meta_file=os.path.join(bundle, META),
                    config_file=os.path.join(bundle, INFERENCE), bundle_root=bundle)


def _preferred_files(bundle: str, forward_args: ForwardArgs) -> None:
    missing = [f for f in FILES if not os.path.isfile(os.path.join(bundle, f))]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}")


CHECKS = {"verify_metadata": _verify_metadata, "verify_net_in_out": _verify_net_in_out, "ckpt_export": _ckpt_export,
          "preferred_files": _preferred_files}


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """MONAI's input summaries (temporary paths) kept out of the command's output; warnings still shown."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _in_torchscript(error: BaseException) -> bool:
    return any(f"{os.sep}torch{os.sep}jit{os.sep}" in frame.filename for frame in traceback.extract_tb(error.__traceback__))


def run_checks(bundle: str | os.PathLike, names: Sequence[str] = tuple(CHECKS),
               forward_args: ForwardArgs = timestep_args) -> dict[str, tuple[str, str]]:
    """``{check: (status, detail)}``, status ``passed``, ``failed`` or ``excluded`` (TorchScript export only).
    ``forward_args(device)``: the keyword arguments of the network's forward besides its input (default: a
    diffusion UNet's ``timesteps``)."""
    results = {}
    with _quiet("monai.bundle.scripts", "monai.apps"):
        for name in names:
            try:
                CHECKS[name](os.fspath(bundle), forward_args)
                results[name] = ("passed", "")
            except Exception as e:  # a check's failure is its result
                status = "excluded" if name == "ckpt_export" and _in_torchscript(e) else "failed"
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                results[name] = (status, f"{type(e).__name__}: {first}".rstrip(": "))
    return results


def describe(name: str, status: str, detail: str, bundle_name: str, forward_arg: str = "timesteps") -> str:
    """One line for the result of check ``name`` (the TorchScript exclusion says where the zoo lists it);
    ``forward_arg``: the keyword argument the network's forward needs."""
    if status == "excluded":
        return (f"{name}: excluded: DiffusionModelUNet cannot be TorchScripted ({detail}); list '{bundle_name}' in "
                f"{TORCHSCRIPT_LIST} of the zoo's ci/bundle_custom_data.py, as the zoo's other diffusion bundles are")
    if name == "verify_net_in_out" and status == "passed":
        return (f"{name}: passed with the {forward_arg} argument (the zoo's CI passes none, which this network's forward "
                f"requires: there, list '{bundle_name}' in {SHAPE_LIST} as the zoo's diffusion bundles are)")
    return f"{name}: {status}" + (f" ({detail})" if detail else "")
