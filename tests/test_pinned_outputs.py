"""Byte pins: sha256 of small outputs, recorded before the "one implementation per concept" merge.

A refactor (moving the atomic writer, the phase/complex helpers, the head mask, ``write_csv``)
must not change what the bundle writes. Every digest here was computed with the code as it
was before the merge; a change to one is a behaviour change and has to be argued for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import sigpy
import torch
from PIL import Image

from scripts.core.complex import (
    apply_phase,
    channels_to_complex,
    circular_variance,
    complex_to_channels,
    complex_to_phasor,
    phasor_to_phase,
    wrap_phase,
)
from scripts.core.physics import head_mask
from scripts.io.tables import write_csv
from scripts.phase.sources import get_phase_source
from scripts.recon.prior import write_prior_card
from scripts.simulate.dataset import simulate_dataset
from scripts.synthesis.synthesize import Synthesizer

SIMULATED = {
    "dataset.json": "7e14c52230f4ede74bf37f95026ad10585fd71a76328c144a0107511ab338b74",
    "train/subject_00000.h5": "f60aacd39709f68aefbe253a8f180360765a91c59dcab50adeb023da0892133e",
    "val/subject_00001.h5": "9a04cf7268ad104ec1fb5517339feeb41ef10ae6e7e0860f870da546ba80ec1d",
}
SKIPPED_NONE = "37517e5f3dc66819f61f5a7bb8ace1921282415f10551d2defa5c3eb0985b570"
SYNTHESIZED = {
    "physics": {
        "17aed04efe396f23_s0.h5": "b2339c8f61511a31f8e82b725e0314a885c325df12c0d37828b9f87d6523325b",
        "292847852c78269c_s0.h5": "356fcd74b40d6a70d3f539cb30b76aba73179d77a608043413a22d7e71270b8e",
        "e921d9260495195f_s0.h5": "a521cc9afc5b68b3bb518e0e5fc8b691ec699cdc7e4b38c4a722d47a05a35363",
        "manifest.jsonl": "d9c0e95dcbbf68f631ada19b07d60a1653d6ff515dc768b4da660b85e26a8b73",
        "skipped.json": SKIPPED_NONE,
    },
    "smooth": {
        "17aed04efe396f23_s0.h5": "1b0e01736941ffad6a7f2d41a875e5ffea745a1b7b1f42fa2b6d65fe008e510c",
        "292847852c78269c_s0.h5": "6b1f634b6de6d7044c1322f4884637fded7031d8bcbf13262d23888c92cd7517",
        "e921d9260495195f_s0.h5": "bd5d27641d9ed09aa60cbc82df8698a2c2aa1c8d43a73c1e8faf08607d2a47d6",
        "manifest.jsonl": "6e6955ab6bfe0af084e652fe359e1c7c61c73e391ceec1bc3ee4f4474060ac27",
        "skipped.json": SKIPPED_NONE,
    },
}
SOURCES = {
    "uniform": "eac08d044bf212424e22334a030c48514310db92c41ccf73d495e4afb8dcb0ef",
    "gaussian": "21d052a42aaaff08087f2feb586550d0220fbd087fc2b4f57b25d08ee8f3f08f",
    "smooth": "28a9d92d36ca5193cc6e2cd71edc1aa3c38d1959f8dd5ce459e8c2b0be301483",
    "sinusoidal": "d40a9fa37ec4f8e089c0fbfdf42483b77bbd7fa630e842e95a2d61504405f65f",
    "physics": "4f1e93c960d2e25b20eca84a6a62831a1407992e1848ce84773ac566834b9039",
    "ground_truth": "de8851d0d33441dfb9ecb414114ccd9249f0d0b3dc0d9da0fbb4d53ffc05c840",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def phantom() -> np.ndarray:
    return np.abs(sigpy.shepp_logan((32, 32)))


def magnitudes() -> np.ndarray:
    ph = phantom()
    return np.stack([ph * 3 + 0.1, ph[::-1] * 2 + 0.1]).astype(np.float32)


def test_simulated_dataset_bytes(tmp_path):
    simulate_dataset(tmp_path / "sim", num_subjects=2, slices_per_subject=2, image_size=32, num_coils=2, seed=5)
    assert tree(tmp_path / "sim") == SIMULATED  # and no temporary file left behind


@pytest.fixture(scope="module")
def magnitude_folder(tmp_path_factory) -> Path:
    """Two NIfTI volumes (2 slices each) and one PNG, 32 x 32."""
    root = tmp_path_factory.mktemp("magnitudes") / "in"
    (root / "nifti").mkdir(parents=True)
    ph, rng = phantom(), np.random.default_rng(0)
    for i in range(2):
        vol = np.stack([ph * (100 + 10 * s + i) + rng.random((32, 32)) for s in range(2)], axis=-1)
        nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), root / "nifti" / f"vol{i}.nii.gz")
    Image.fromarray((ph * 200 + 20).astype(np.uint8)).save(root / "slice.png")
    return root


@pytest.mark.parametrize("source", sorted(SYNTHESIZED))
def test_synthesis_bytes(magnitude_folder, tmp_path, source):
    out = tmp_path / "out"
    Synthesizer(magnitude_folder, out, phase_source=source, num_coils=2, image_size=32, noise_std=0.01, seed=3).run()
    report = Path(f"{out}_report")  # the manifest and skip report live beside the h5 folder, not in it
    files = sorted(out.glob("*.h5")) + [report / "manifest.jsonl", report / "skipped.json"]
    assert {p.name: sha(p.read_bytes()) for p in files} == SYNTHESIZED[source]
    assert not list(out.rglob("*.tmp")), "no temporary file left behind"


def test_phase_source_bytes():
    mag = magnitudes()
    got = {n: sha(get_phase_source(n)(mag, seed=4).tobytes()) for n in ("uniform", "gaussian", "smooth", "sinusoidal", "physics")}
    ref = (mag * np.exp(1j * np.linspace(-4, 4, 32))[None, None]).astype(np.complex64)
    got["ground_truth"] = sha(get_phase_source("ground_truth")(mag, 0, ref).tobytes())
    assert got == SOURCES


def test_phase_and_complex_helper_bytes():
    x = np.random.default_rng(1).uniform(-10, 10, 1000)
    assert sha(wrap_phase(x, np.float32).tobytes()) == "7ca464eaa0cb08c6786c18c94c7c9fb91c608472efc0bb1579d1fd7ba843c5ed"
    p = np.random.default_rng(2).normal(size=(2, 16, 16)).astype(np.float32)
    assert sha(phasor_to_phase(p, dim=0).tobytes()) == "8a688108ae87c89241cb26526964af7e0b509780a99bfeadadf98d97ed06fac6"
    assert sha(phasor_to_phase(torch.from_numpy(p), dim=0).numpy().tobytes()) == (
        "892cbba693bcaf7a0738bf6ed1610ca10cd0bd2339038399d99667e28c466bdb")
    rng_re, rng_im = np.random.default_rng(3), np.random.default_rng(4)
    z = (rng_re.normal(size=(4, 8, 8)) + 1j * rng_im.normal(size=(4, 8, 8))).astype(np.complex64)
    assert sha(complex_to_phasor(z).tobytes()) == "cb01cb1278394125d618f646f202726328c62f668df73edb1e3a087e3fea3d27"
    assert sha(apply_phase(np.abs(z), np.angle(z)).tobytes()) == "02e595a7511aea2da7d03eef5de6f52cc1494025c0d5bf20f1759c9a3533a808"
    assert sha(circular_variance(np.angle(z)).tobytes()) == "ebf104a2ea4c0986bd418757b1fe5946e5da648bf755c2b38f27325f8239f812"
    assert sha(complex_to_channels(z[0]).tobytes()) == "6c77a4a930ef2a8f602c44e882bcbe8a269ea4618dfe42f31d7a0dafbffcdb67"
    back = channels_to_complex(complex_to_channels(z)[:, None].swapaxes(0, 1))
    assert sha(back.tobytes()) == "bb6d97c7f93862329349c4aae78768469c274f5bc1241d20907a99a0c7856b61"


def test_head_mask_bytes():
    m = head_mask(magnitudes()[0])
    assert sha(np.packbits(m).tobytes()) == "0acc2dec69d496dbd119e6fee1e24417165a26a8bde38fbdd33dd83bfd41ffcc"


def test_table_and_card_bytes(tmp_path):
    path = write_csv([{"a": 1, "b": 0.5}, {"b": 2.25, "c": "x,y"}], tmp_path / "t.csv")
    assert sha(Path(path).read_bytes()) == "08663f2a6d14e86e2465c8dac33c52cb5c341a53d210e28e0050768667ed4e1b"
    card = Path(write_prior_card(tmp_path / "ck", {"x": np.arange(3), "name": "n", "f": 0.1}))
    assert sha(card.read_bytes()) == "2167a57bdaece85417f28e94170431eb81533e14ee99eec61e7d9c4fdca29939"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ck", "prior.json", "t.csv"]
