"""Pinned numbers of the reconstruction building blocks (ESPIRiT, L1-wavelet, SENSE/CG, masks, slice
metrics, the real ``.mat`` reader), computed on small deterministic inputs before the "one implementation
per concept" refactor; a refactor must keep them (relative tolerance ~1e-5). L1-wavelet numbers get 1e-4:
they were recorded with sigpy's ``L1WaveletRecon``, whose step-size power iteration starts from an unseeded
``np.random`` vector (~1e-5 from run to run); the torch port (:mod:`scripts.recon.l1`) is seeded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from scripts.core.fft import fft2c

N, COILS = 64, 4
RECORD: dict | None = None  # set to a dict to record new values instead of checking


# ----------------------------------------------------------------------------- inputs
def image(n: int = N) -> np.ndarray:
    """An elliptical head with an inner structure and a smooth phase (complex64), no randomness."""
    y, x = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    head = ((x / 0.75) ** 2 + (y / 0.85) ** 2 < 1).astype(np.float32)
    inner = (x / 0.4) ** 2 + ((y - 0.1) / 0.45) ** 2 < 1
    dot = (x + 0.3) ** 2 + (y + 0.4) ** 2 < 0.01
    mag = head * (0.6 + 0.4 * inner + 0.3 * dot)
    phase = 0.7 + 1.2 * x - 0.8 * y + 0.5 * (x**2 + y**2)
    return (mag * np.exp(1j * phase)).astype(np.complex64)


def coil_maps(n: int = N) -> np.ndarray:
    import sigpy.mri

    return sigpy.mri.birdcage_maps((COILS, n, n), r=1.5).astype(np.complex64)


def kspace(n: int = N, noise: float = 0.005) -> np.ndarray:
    """Fully sampled 4-coil k-space ``(C, n, n)`` of :func:`image` with seeded white noise."""
    rng = np.random.default_rng(0)
    k = fft2c(coil_maps(n) * image(n)[None])
    k = k + noise * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)) / np.sqrt(2)
    return k.astype(np.complex64)


def fingerprint(x: np.ndarray) -> list[float]:
    """``[sum |x|, sum |x|^2, Re sum x, Im sum x, |x| at three fixed places]``."""
    x = np.asarray(x)
    a = np.abs(x).astype(np.float64).ravel()
    s = np.sum(x.astype(np.complex128))
    picks = [a.size // 3 + 7, a.size // 2 + 5, (2 * a.size) // 3 + 3]
    return [float(a.sum()), float((a**2).sum()), float(s.real), float(s.imag), *(float(a[i]) for i in picks)]


def pin(key: str, got, rtol: float = 1e-5, atol: float = 0.0) -> None:
    """Compare ``got`` with the pinned value (exactly for strings, ints and lists of them)."""
    if RECORD is not None:
        RECORD[key] = got
        return
    want = PINNED[key]
    if isinstance(want, (str, int)) or (isinstance(want, list) and want and isinstance(want[0], (str, int))):
        assert got == want, (key, got, want)
    else:
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), rtol=rtol,
                                   atol=atol, err_msg=key)


def check(x: np.ndarray, key: str, rtol: float = 1e-5) -> None:
    """Pinned :func:`fingerprint` of ``x``; the signed sums may be near zero, so ``atol`` is relative to sum |x|."""
    got = fingerprint(x)
    pin(key, got, rtol, atol=rtol * abs(got[0]))


def mask_hash(mask: np.ndarray) -> str:
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    return hashlib.sha256(np.packbits(m).tobytes() + str(m.shape).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- ESPIRiT (four call sites)
def test_espirit_bank_maps_pinned():
    from scripts.coils.simulation import espirit_maps

    check(espirit_maps(kspace(), size=None, calib_width=24), "coils.espirit_maps")
    check(espirit_maps(kspace(), size=32, calib_width=16, kernel_width=5), "coils.espirit_maps.size32")


def test_espirit_combine_pinned():
    from scripts.phase.data import espirit_combine

    check(espirit_combine(kspace()), "phase.espirit_combine")
    check(espirit_combine(kspace(32), calib_width=48, kernel_width=4), "phase.espirit_combine.clipped")


def test_recon_maps_from_the_calibration_square_pinned():
    from scripts.recon.cases import estimate_maps

    check(estimate_maps(kspace(), 8), "recon.estimate_maps.8")
    check(estimate_maps(kspace(32), 4), "recon.estimate_maps.32px")


def test_evaluation_maps_from_the_acs_box_pinned():
    from scripts.core.masks import make_mask
    from scripts.recon.evaluate import acs_espirit_maps

    k = kspace()
    cols = make_mask("equispaced", (N, N), 4, 0.125, seed=1)
    check(acs_espirit_maps(k * cols, cols), "evaluate.espirit_maps.columns")
    box = make_mask("poisson", (N, N), 3, 0.2, seed=1)
    check(acs_espirit_maps(k * box, box, kernel_width=5, crop=0.9), "evaluate.espirit_maps.poisson")
    with pytest.raises(ValueError, match="too small"):
        acs_espirit_maps(k * cols, np.eye(N, dtype=bool))


# ----------------------------------------------------------------------------- L1-wavelet
def test_l1_wavelet_of_the_evaluation_pinned():
    """The VarNet evaluation's L1-wavelet: ACS maps, k-space / max of the zero-filled RSS, RSS of S x."""
    from scripts.core.masks import make_mask
    from scripts.core.metrics import nmse, psnr
    from scripts.io.fastmri_h5 import rss
    from scripts.recon.evaluate import acs_espirit_maps
    from scripts.recon.l1 import l1_wavelet_recon

    k = kspace()
    gt = rss(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)))
    mask = make_mask("equispaced", (N, N), 4, 0.125, seed=2)
    masked = (k * mask).astype(np.complex64)
    scale = float(rss(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(masked, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))).max())
    maps = acs_espirit_maps(masked / np.float32(scale), mask)
    x = l1_wavelet_recon(masked / np.float32(scale), mask, maps, 0.005, max_iter=30)
    out = np.sqrt(np.sum(np.abs(maps * x[None]) ** 2, axis=0)).astype(np.float32) * scale
    check(out, "evaluate.l1_wavelet_recon", rtol=1e-4)
    pin("evaluate.l1_wavelet_recon.metrics", [psnr(gt, out), nmse(gt, out)], rtol=1e-4)


def test_l1_wavelet_of_the_prior_study_pinned():
    """The prior study's L1-wavelet: maps from the calibration square, k-space / the CG-SENSE tissue level."""
    from scripts.core.masks import pattern_mask
    from scripts.core.metrics import slice_metrics
    from scripts.core.sense import SenseOp, estimate_scale
    from scripts.recon.cases import make_case
    from scripts.recon.l1 import l1_wavelet_recon, tune_l1_lambda

    mask = pattern_mask("poisson", (N, N), 4.0, 8, seed=0)
    case = make_case(kspace(), mask, 8)
    check(case.maps, "make_case.maps")
    check(case.reference, "make_case.reference")
    op = SenseOp(torch.from_numpy(case.maps)[None], torch.from_numpy(mask)[None])
    assert case.scale == float(estimate_scale(torch.from_numpy(case.kspace)[None], op)[0])

    def l1(scale: float) -> np.ndarray:
        x = l1_wavelet_recon(case.kspace / np.float32(scale), mask, case.maps, 0.01, max_iter=30)
        return (x * scale).astype(np.complex64)

    x = l1(case.scale)
    check(x, "posterior.l1_wavelet_recon", rtol=1e-4)
    m = slice_metrics(case.reference, x)
    pin("posterior.l1_wavelet_recon.metrics", [m["psnr"], m["nmse"], m["ssim"]], rtol=1e-4)
    check(l1(250.0), "posterior.l1_wavelet_recon.scale250", rtol=1e-4)
    tuned = tune_l1_lambda([case], [1e-3, 1e-2], max_iter=20)
    pin("tune_l1_lambda.lambda", [tuned["lambda"]], rtol=0)
    pin("tune_l1_lambda.scores", tuned["scores"], rtol=1e-4)


# ----------------------------------------------------------------------------- SENSE and CG
def test_sense_operator_and_cg_pinned():
    from scripts.core.masks import pattern_mask
    from scripts.core.sense import SenseOp, data_consistency, estimate_scale, sense_init, zero_filled

    mask = pattern_mask("equispaced1d", (N, N), 4.0, 8, seed=0)
    maps = torch.from_numpy(coil_maps())[None]
    y = torch.from_numpy(kspace() * mask)[None]
    op = SenseOp(maps, torch.from_numpy(mask)[None])
    zf = zero_filled(y, op)
    check(zf.numpy(), "sense.zero_filled")
    check(sense_init(y, op, 10).numpy(), "sense.sense_init")
    check(data_consistency(zf, op, y, 3.0, 5).numpy(), "sense.data_consistency")
    scales = [float(estimate_scale(y, op, m)[0]) for m in ("sense", "zero_filled", "acs")]
    pin("sense.estimate_scale", scales)


# ----------------------------------------------------------------------------- masks
def test_column_masks_pinned():
    from scripts.core.masks import make_mask
    from scripts.core.masks import pattern_mask as pattern

    cols = {
        "core.equispaced": make_mask("equispaced", (N, N), 4, 0.08, seed=3)[0],
        "core.random": make_mask("random", (N, 80), 6, 0.04, seed=3)[0],
        "recon.equispaced1d": pattern("equispaced1d", (N, N), 5.0)[0],
        "recon.equispaced1d.256": pattern("equispaced1d", (256, 256), 5.0, seed=2)[0],
        "recon.equispaced1d.centre_only": pattern("equispaced1d", (32, 32), 8.0, 8)[0],
    }
    for key, c in cols.items():
        pin(f"masks.{key}", np.flatnonzero(c).tolist())


def test_poisson_masks_pinned():
    from scripts.core.masks import make_mask
    from scripts.core.masks import pattern_mask as pattern

    masks = {
        "core.poisson": make_mask("poisson", (N, 48), 6, 0.08, seed=1),
        "recon.poisson": pattern("poisson", (N, N), 8.0),
        "recon.poisson.rect": pattern("poisson", (128, N), 4.0, 16, seed=0),
    }
    for key, m in masks.items():
        pin(f"masks.{key}", [mask_hash(m), int(m.sum())])
    eq = pattern("equispaced1d", (N, N), 5.0)
    assert eq.dtype == np.float32 and eq.shape == (N, N) and (eq == eq[:1]).all()


# ----------------------------------------------------------------------------- slice metrics
def test_slice_metrics_pinned():
    """One slice_metrics, ground truth first: per slice of a volume with the volume max (the VarNet
    evaluation), and on complex images as magnitudes (the prior study)."""
    from scripts.core.metrics import slice_metrics

    rng = np.random.default_rng(0)
    gt = rng.random((3, 32, 32)) * np.array([1.0, 2.0, 0.5])[:, None, None]
    pred = gt + 0.05 * rng.standard_normal(gt.shape)
    rows = [slice_metrics(g, p, gt.max()) for g, p in zip(gt, pred)]
    got = [[r["nmse"], r["psnr"], r["ssim"]] for r in rows]
    pin("metrics.volume_rows", got, rtol=1e-10)
    ref = image(32)
    rec = ref + (0.03 * (rng.standard_normal(ref.shape) + 1j * rng.standard_normal(ref.shape))).astype(np.complex64)
    for dr, key in ((None, "metrics.complex"), (2.0, "metrics.complex.dr2")):
        m = slice_metrics(ref, rec, dr)
        pin(key, [m["nmse"], m["psnr"], m["ssim"]], rtol=1e-10)


# ----------------------------------------------------------------------------- real .mat slices
def _write_mats(folder):
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    coil_images = (coil_maps(80) * image(80)[None]).transpose(1, 2, 0) * 3e-6
    scipy.io.savemat(folder / "a_GE.mat", {"DATA": coil_images.astype(np.complex128)})
    scipy.io.savemat(folder / "b_Ph.mat", {"DATA": coil_images.astype(np.complex128)})
    (folder / "k").mkdir()
    scipy.io.savemat(folder / "k" / "k.mat", {"kspace_full": kspace(40).transpose(1, 2, 0)})
    return folder


def test_mat_readers_pinned(tmp_path):
    import h5py

    from scripts.io.real_data import is_phantom, read_mat_kspace
    from scripts.recon.cases import read_kspace
    from scripts.studies.varnet_study import prepare_real_test_set

    folder = _write_mats(tmp_path / "mats")
    k, info = read_kspace(folder / "a_GE.mat", 64)
    assert k.shape == (1, COILS, 64, 64) and info["original_size"] == [80, 80] and info["mask"] is None
    check(k, "read_kspace.mat.64")
    k, info = read_kspace(folder / "a_GE.mat")
    check(k, "read_kspace.mat")
    k, _ = read_kspace(folder / "k" / "k.mat", 32)
    assert k.shape == (1, COILS, 32, 32)
    check(k, "read_kspace.kspace_key")
    assert is_phantom(folder / "b_Ph.mat") and not is_phantom(folder / "a_GE.mat")
    assert read_mat_kspace(folder / "a_GE.mat").shape == (COILS, 80, 80)
    np.testing.assert_array_equal(read_mat_kspace(folder / "k" / "k.mat"), kspace(40))
    files = prepare_real_test_set(folder, tmp_path / "out", 48)
    assert [p.rsplit("/", 1)[-1] for p in files] == ["real_a_GE.h5"]
    with h5py.File(files[0]) as f:
        assert f["kspace"].shape == (1, COILS, 48, 48)
        check(f["kspace"][()], "prepare_real_test_set")


def test_real_slices_pinned(real_dir, tmp_path):
    import h5py

    from scripts.recon.cases import read_kspace
    from scripts.studies.varnet_study import prepare_real_test_set

    k, info = read_kspace(real_dir / "brain_4coil" / "4h_GE.mat", 64)
    check(k, "real.read_kspace.4h_GE.64")
    files = prepare_real_test_set(real_dir / "brain_4coil", tmp_path, 64)
    with h5py.File([f for f in files if "4h_GE" in f][0]) as f:
        check(f["kspace"][()], "real.prepare_real_test_set.4h_GE")


# ----------------------------------------------------------------------------- training copies in the recon convention
def test_espirit_dataset_pinned(tmp_path):
    import h5py

    from scripts.io.fastmri_h5 import write_fastmri
    from scripts.recon.cases import espirit_dataset

    write_fastmri(tmp_path / "src" / "val" / "vol0.h5", np.stack([kspace(48), kspace(48, noise=0.02)]))
    espirit_dataset(tmp_path / "src", tmp_path / "dst", size=32)
    with h5py.File(tmp_path / "dst" / "val" / "vol0.h5") as f:
        assert f["kspace"].shape == (2, COILS, 32, 32)
        check(f["kspace"][()], "espirit_dataset.kspace")
        check(f["image_complex"][()], "espirit_dataset.image_complex")
        check(f["coil_maps"][()], "espirit_dataset.coil_maps")


# ----------------------------------------------------------------------------- the one ESPIRiT
@pytest.mark.parametrize("n, calib, kernel, crop", [(64, 24, 6, 0.95), (64, 8, 4, 0.0), (63, 9, 3, 0.8), (32, 16, 5, 0.5)])
def test_espirit_on_a_centred_square_is_sigpys_espirit_calib(n, calib, kernel, crop):
    from sigpy.mri.app import EspiritCalib

    from scripts.core.espirit import calib_box, espirit_calib

    k = np.ascontiguousarray(kspace()[:, :n, :n])
    # sigpy in double precision as the reference: its own float32 maps are 2-6e-6 from it, as ours are
    want = EspiritCalib(k.astype(np.complex128), calib_width=calib, kernel_width=kernel, thresh=0.02, crop=crop,
                        max_iter=100, show_pbar=False).run()
    got = espirit_calib(k, calib_box(k.shape, calib), kernel, 0.02, crop, 100)
    assert got.dtype == np.complex64 and got.shape == k.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    tensor = espirit_calib(torch.from_numpy(k), calib_box(k.shape, calib), kernel, 0.02, crop, 100)
    assert isinstance(tensor, torch.Tensor) and np.array_equal(tensor.numpy(), got)


def test_espirit_kernels_a_few_at_a_time_give_the_same_maps(monkeypatch):
    import scripts.core.espirit as espirit

    k = kspace()
    whole = espirit.espirit_calib(k, espirit.calib_box(k.shape, 24), 6, 0.02, 0.0, 30)
    monkeypatch.setattr(espirit, "KERNEL_CHUNK_ELEMENTS", 3 * COILS * N * N)  # three kernels at a time
    np.testing.assert_allclose(espirit.espirit_calib(k, espirit.calib_box(k.shape, 24), 6, 0.02, 0.0, 30), whole,
                               rtol=0, atol=1e-5)


def test_calibration_and_acs_boxes():
    from scripts.core.espirit import acs_box, calib_box
    from scripts.core.masks import make_mask

    assert calib_box((4, 64, 64), 24) == (20, 44, 20, 44)
    assert calib_box((63, 64), 9) == (27, 36, 28, 37)  # sigpy.resize's placement
    assert calib_box((32, 64), 48) == (0, 32, 16, 48)  # at most the shorter side, square
    cols = make_mask("equispaced", (N, N), 4, 0.125, seed=1)
    assert acs_box(cols, (COILS, N, N)) == (0, N, 28, 36)
    box = np.zeros((N, N), bool)
    box[30:35, 29:36] = True
    assert acs_box(box, (N, N)) == (30, 35, 29, 36)


# Recorded with the code of ec8e9fc, before the refactor (set RECORD = {} and run the tests to re-record).
PINNED: dict = {
    'coils.espirit_maps': [7729.411962449551, 4096.000196017822, 6819.076475694776, -50.19331436414943, 0.39289748668670654, 0.5391684770584106, 0.3686312437057495],
    'coils.espirit_maps.size32': [1935.369597941637, 1024.0000463062186, 1724.7068613767624, -14.002889285093328, 0.3375645577907562, 0.4525558352470398, 0.5407161712646484],
    'espirit_dataset.coil_maps': [3972.1588832251728, 2048.000002730167, 3641.8243706109934, -334.1014120170833, 0.4322546124458313, 0.13522230088710785, 0.32649314403533936],
    'espirit_dataset.image_complex': [717.7560858744255, 521.2608101784915, 435.88462415024696, -340.7558273887407, 0.9929032325744629, 0.006366441957652569, 0.5748857855796814],
    'espirit_dataset.kspace': [577.1604031409952, 533.7447408970954, 83.57119068113656, -95.7907195000289, 0.04366053640842438, 0.01173160970211029, 0.020821770653128624],
    'evaluate.espirit_maps.columns': [4392.469536527991, 2294.99998764049, 4029.742711253464, -50.81558808996231, 0.387761652469635, 0.0, 0.38882550597190857],
    'evaluate.espirit_maps.poisson': [5341.422428056598, 2818.0000303606125, 4835.216238155961, -40.02877775288787, 0.3919666111469269, 0.0, 0.36663758754730225],
    'evaluate.l1_wavelet_recon': [1406.8293614736758, 1018.0372606355407, 1406.8293614736758, 0.0, 0.8577596545219421, 0.1352875679731369, 0.6865412592887878],
    'evaluate.l1_wavelet_recon.metrics': [29.614058098036324, 1.3662169490261564],
    'make_case.maps': [7839.560039706528, 4096.000007772291, 7076.657708172206, -247.75962390660158, 0.38853999972343445, 0.5636758804321289, 0.3793970048427582],
    'make_case.reference': [1436.1597416669829, 1089.3050521941427, 783.2584766399304, -753.6645912298263, 0.5958757996559143, 0.00595496641471982, 0.5886046290397644],
    'masks.core.equispaced': [2, 7, 13, 18, 23, 29, 30, 31, 32, 33, 34, 40, 45, 50, 56, 61],
    'masks.core.poisson': ['fd2350f803caff6c', 511],
    'masks.core.random': [6, 8, 10, 16, 35, 39, 40, 41, 53, 66, 75, 76, 79],
    'masks.recon.equispaced1d': [5, 17, 28, 29, 30, 31, 32, 33, 34, 35, 40, 52],
    'masks.recon.equispaced1d.256': [8, 19, 29, 40, 51, 61, 72, 83, 93, 104, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 147, 157, 168, 179, 189, 200, 211, 221, 232, 243, 253],
    'masks.recon.equispaced1d.centre_only': [12, 13, 14, 15, 16, 17, 18, 19],
    'masks.recon.poisson': ['9d4fd6411bae337f', 510],
    'masks.recon.poisson.rect': ['ab16f6206a4d7b48', 2072],
    'metrics.complex': [0.005488396473793325, 28.48281161213627, 0.9324436585738297],
    'metrics.complex.dr2': [0.005488396473793325, 34.50341048997722, 0.9477083002769676],
    'metrics.volume_rows': [[0.00744231851180513, 31.890068406743136, 0.9843303836409815], [0.00188272199225735, 32.208406967218664, 0.996450289489595], [0.03053096810313299, 32.01833392581078, 0.9466164499712136]],
    'phase.espirit_combine': [1436.9039767107242, 1090.2964464480513, 778.953383266746, -761.7309233473788, 0.5959109663963318, 0.005908097140491009, 0.5887973308563232],
    'phase.espirit_combine.clipped': [350.9539435324841, 264.7816289510176, 192.15669823578173, -183.51398672589312, 0.0021483490709215403, 0.6020203828811646, 0.9984323978424072],
    'posterior.l1_wavelet_recon': [1452.3623379197816, 1073.0701166206343, 781.354610172003, -751.8007446281777, 0.6573783755302429, 0.008474980480968952, 0.616744339466095],
    'posterior.l1_wavelet_recon.metrics': [29.413125178603412, 0.004385317384855506, 0.847462862745376],
    'posterior.l1_wavelet_recon.scale250': [770.4927577050112, 358.39012485916226, 406.401478991917, -437.69530054519237, 0.5485753417015076, 0.0, 0.4266602396965027],
    'prepare_real_test_set': [69395.83795526251, 10686172.720293235, 8302.029410674935, -9768.366958393322, 3.778123378753662, 1.1950371265411377, 1.9275410175323486],
    'read_kspace.kspace_key': [290.86501822873834, 265.7524905911788, 41.025584357196976, -48.10490929308719, 0.04860324412584305, 0.03150741010904312, 0.08715079724788666],
    'read_kspace.mat': [0.003727270918675446, 1.539018178078852e-08, 0.00031113796627893486, -0.0003655040147359234, 1.3523171560336777e-07, 2.902307549845773e-08, 2.354593675590877e-07],
    'read_kspace.mat.64': [0.0025231630346452816, 9.818410553739351e-09, 0.00025092729395685036, -0.00029183255409773244, 3.4271340609848266e-07, 4.520988738931919e-08, 2.488349792884037e-08],
    'real.prepare_real_test_set.4h_GE': [152842.61832486838, 11959858.834748868, 2026.2097814063518, -3248.5417850738945, 3.820964813232422, 4.971369743347168, 5.302982807159424],
    'real.read_kspace.4h_GE.64': [438642145.230011, 98504899972055.78, 5815008.017977174, -9322971.252738288, 10965.7646484375, 14267.3056640625, 15219.0009765625],
    'recon.estimate_maps.32px': [1986.566480524838, 1023.9999978799913, 1827.428328678012, -172.4880388146732, 0.3468882739543915, 0.7158340215682983, 0.5357831120491028],
    'recon.estimate_maps.8': [7839.560039706528, 4096.000007772291, 7076.657708172206, -247.75962390660158, 0.38853999972343445, 0.5636758804321289, 0.3793970048427582],
    'sense.data_consistency': [1485.542100114144, 1054.3508937982815, 839.1245147302616, 899.1465949169301, 0.7692340612411499, 0.10552040487527847, 0.6206841468811035],
    'sense.estimate_scale': [1.0685206651687622, 1.043627142906189, 1.053810954093933],
    'sense.sense_init': [1489.414490471332, 1071.6126521259343, 839.6898768679966, 899.6816088439664, 0.7202061414718628, 0.051852744072675705, 0.566743791103363],
    'sense.zero_filled': [1487.6281216096759, 1050.8022059316822, 839.7605524812789, 899.9941435360815, 0.7733442187309265, 0.1281161904335022, 0.6425130367279053],
    'tune_l1_lambda.lambda': [0.001],
    'tune_l1_lambda.scores': [32.28741552350475, 29.440633149524025],
}
