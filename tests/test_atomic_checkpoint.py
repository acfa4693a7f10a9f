"""The one atomic writer (scripts.io.atomic), the one table writer, the one checkpoint finder
(scripts.io.checkpoint) and the one phase wrap (scripts.core.complex)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from scripts.core.complex import phasor_to_phase, wrap_phase
from scripts.io.atomic import (
    atomic_path,
    save_npy,
    save_npz,
    stale_temporaries,
    temporary_name,
    write_json,
    write_text,
)
from scripts.io.checkpoint import (
    AtomicCheckpointSaver,
    RNGState,
    checkpoint_iteration,
    latest_checkpoint,
    load_weights,
    remove_stale_temporaries,
)
from scripts.io.tables import write_csv

PI32 = np.float32(np.pi)


# ------------------------------------------------------------------------------ atomic writes
def test_temporary_names_are_hidden_beside_the_target_and_unique_per_call(tmp_path):
    target = tmp_path / "out.h5"
    a, b = temporary_name(target), temporary_name(target)
    assert a != b and a.parent == tmp_path
    assert re.fullmatch(rf"\.out\.h5\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", a.name)


def test_atomic_path_renames_on_success_and_removes_on_error(tmp_path):
    target = tmp_path / "sub" / "x.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_bytes(b"one")
    assert target.read_bytes() == b"one"
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error):
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"partial")
                raise error
        assert target.read_bytes() == b"one", "the target is untouched by a failed write"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"], "no temporary file is left"


def test_helpers_write_the_expected_bytes(tmp_path):
    assert write_text(tmp_path / "t.txt", "é\n").read_bytes() == "é\n".encode()
    assert write_json(tmp_path / "a.json", {"b": 1, "a": [1]}).read_text() == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}\n'
    plain = write_json(tmp_path / "p.json", {"b": 1, "a": 2}, indent=None, sort_keys=False)
    assert plain.read_text() == '{"b": 1, "a": 2}\n'
    assert write_json(tmp_path / "n.json", [1], end="").read_text() == "[\n  1\n]"
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(np.load(save_npy(tmp_path / "c" / "k.npy", x)), x)
    with np.load(save_npz(tmp_path / "bank.npz", {"x": x})) as z:  # no second ".npz" appended
        np.testing.assert_array_equal(z["x"], x)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "bank.npz", "c", "k.npy", "n.json", "p.json", "t.txt"]


def test_write_csv_columns_are_the_union_of_keys(tmp_path):
    path = write_csv([{"a": 1, "b": 0.5}, {"b": 2.25, "c": "x,y"}], tmp_path / "t.csv")
    assert path.read_bytes() == b'a,b,c\r\n1,0.5,\r\n,2.25,"x,y"\r\n'  # the csv module's line ends


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_only_names_dead_writers(tmp_path):
    target = tmp_path / "a_s0.h5"
    dead, live = _dead_pid(), os.getppid()
    files = {
        "dead": tmp_path / f".a_s0.h5.{dead}.0123abcd.tmp",
        "mine": temporary_name(target),
        "live": tmp_path / f".a_s0.h5.{live}.89abcdef.tmp",
        "legacy": tmp_path / ".a_s0.h5.abc123.tmp",  # an older writer's random name
        "other_target": tmp_path / f".a_s0.h5.1.{dead}.0123abcd.tmp",  # the temporary of "a_s0.h5.1"
        "other_name": tmp_path / f".b_s0.h5.{dead}.0123abcd.tmp",
    }
    for p in files.values():
        p.write_bytes(b"")
    assert stale_temporaries(target) == sorted([files["dead"], files["legacy"]])
    assert stale_temporaries(tmp_path / "none.h5") == []


# ------------------------------------------------------------------------------ checkpoints
def _save(path, iteration: int | None, **extra) -> None:
    state = {"model": {"w": torch.zeros(1)}, **extra}
    if iteration is not None:
        state["trainer"] = {"iteration": iteration, "epoch": 1}
    torch.save(state, path)


def test_latest_checkpoint_ranks_by_stored_iteration_and_skips_unreadable(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    _save(tmp_path / "checkpoint_iteration=9.pt", 9)  # the name says 9 ...
    _save(tmp_path / "checkpoint_final.pt", 12)  # ... the final one holds more (diffusion naming)
    _save(tmp_path / "model.pt", None)  # best weights: not a resume checkpoint
    (tmp_path / "checkpoint_iteration=20.pt").write_bytes(b"partial")  # a killed write
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_final.pt")
    assert checkpoint_iteration(tmp_path / "checkpoint_iteration=20.pt") is None
    assert checkpoint_iteration(tmp_path / "checkpoint_final.pt") == 12
    # VarNet naming (Ignite's defaults): interval and final checkpoints with the iteration in the name
    other = tmp_path / "varnet"
    other.mkdir()
    _save(other / "checkpoint_iteration=2.pt", 2)
    _save(other / "checkpoint_final_iteration=3.pt", 3)
    assert latest_checkpoint(other).endswith("checkpoint_final_iteration=3.pt")
    assert latest_checkpoint(other, prefix="ckpt") is None


def test_load_weights_takes_state_dicts_checkpoints_and_wrapped_networks(tmp_path):
    src = torch.nn.Linear(2, 2)
    torch.save(src.state_dict(), tmp_path / "model.pt")
    torch.save({"model": src.state_dict(), "trainer": {"iteration": 1}}, tmp_path / "checkpoint_final.pt")
    for name in ("model.pt", "checkpoint_final.pt"):
        wrapped = torch.nn.DataParallel(torch.nn.Linear(2, 2))
        load_weights(wrapped, tmp_path / name)
        assert torch.equal(wrapped.module.weight, src.weight)


def test_rng_state_round_trip():
    state = RNGState().state_dict()
    expected = (torch.rand(3), np.random.rand(3))
    torch.rand(5), np.random.rand(5)
    RNGState().load_state_dict(state)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


# ------------------------------------------------------------------------------ checkpoint saver
FULL = {"save_interval": 2, "epoch_level": False, "n_saved": 2, "save_final": True}


def _tiny_run(saver_cls, folder, metrics=(0.5, 0.7, 0.6), epoch_hook=None, full=FULL):
    """Epochs of 2 iterations (each adds 1 to the weights) under a full-state saver (``full``: its
    arguments) and two key-metric savers (fixed ``model.pt``; top 2 by name), as the configs use them."""
    from ignite.engine import Engine, Events

    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)

    def step(engine, batch):
        with torch.no_grad():
            net.weight.add_(1.0)

    engine = Engine(step)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e):  # attached first: the savers see this epoch's value
        e.state.metrics["m"] = metrics[e.state.epoch - 1]

    if epoch_hook is not None:
        engine.add_event_handler(Events.EPOCH_STARTED, epoch_hook)
    savers = [
        saver_cls(str(folder), {"model": net, "trainer": engine}, **full),
        saver_cls(str(folder), {"model": net}, save_key_metric=True, key_metric_name="m", key_metric_filename="model.pt"),
        saver_cls(str(folder), {"net": net}, file_prefix="top", save_key_metric=True, key_metric_name="m", key_metric_n_saved=2),
    ]
    for saver in savers:
        saver.attach(engine)
    engine.run([0, 1], max_epochs=len(metrics))


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_atomic_saver_writes_monai_file_names_and_contents(tmp_path):
    from monai.handlers import CheckpointSaver

    _tiny_run(CheckpointSaver, tmp_path / "monai")
    _tiny_run(AtomicCheckpointSaver, tmp_path / "atomic")
    names = sorted(p.name for p in (tmp_path / "monai").iterdir())
    assert names == ["checkpoint_final_iteration=6.pt", "checkpoint_iteration=4.pt", "checkpoint_iteration=6.pt", "model.pt",
                     "top_net_key_metric=0.6000.pt", "top_net_key_metric=0.7000.pt"]
    assert sorted(p.name for p in (tmp_path / "atomic").iterdir()) == names, "same names, no temporary files"
    for name in names:
        ours, theirs = (torch.load(tmp_path / d / name, weights_only=True) for d in ("atomic", "monai"))
        assert _equal(ours, theirs), name
    assert torch.equal(torch.load(tmp_path / "atomic" / "model.pt", weights_only=True)["weight"][0],
                       torch.load(tmp_path / "atomic" / "checkpoint_iteration=4.pt", weights_only=True)["model"]["weight"][0])


@pytest.mark.parametrize("failing", ["interval", "best"])
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failing):
    """Epoch 2's save dying half-written (its interval checkpoint, or its better ``model.pt``) leaves
    epoch 1's file whole and no temporary file (MONAI's saver deletes the old file first)."""
    real_save = torch.save

    def half_then_fail(obj, f, **kwargs):
        if failing == "best" and "trainer" in obj:
            return real_save(obj, f, **kwargs)
        real_save(obj, f, **kwargs)
        data = open(f, "rb").read()
        open(f, "wb").write(data[: len(data) // 2])
        raise OSError("disk full")

    def fail_from_epoch_2(engine):
        if engine.state.epoch == 2:
            monkeypatch.setattr(torch, "save", half_then_fail)

    full = {"save_interval": 1, "epoch_level": True, "n_saved": 1}
    with pytest.raises(OSError, match="disk full"):
        _tiny_run(AtomicCheckpointSaver, tmp_path, metrics=(0.5, 0.7), epoch_hook=fail_from_epoch_2, full=full)
    monkeypatch.undo()
    interval = "checkpoint_epoch=1.pt" if failing == "interval" else "checkpoint_epoch=2.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [interval, "model.pt", "top_net_key_metric=0.5000.pt"]
    best = torch.load(tmp_path / "model.pt", weights_only=True)
    assert _equal(best, torch.load(tmp_path / "top_net_key_metric=0.5000.pt", weights_only=True)), "epoch 1's best"
    assert torch.load(tmp_path / interval, weights_only=True)["trainer"]["iteration"] == 2 * int(interval[-4])


_KILLED_WRITER = """
import sys, time, torch
from ignite.engine import Engine, Events
from scripts.io.checkpoint import AtomicCheckpointSaver

real_save = torch.save

def half_then_hang(obj, f, **kwargs):  # a large save caught half-way by SIGKILL
    real_save(obj, f, **kwargs)
    data = open(f, "rb").read()
    with open(f, "wb") as out:
        out.write(data[: len(data) // 2])
    print("writing", flush=True)
    time.sleep(120)

torch.save = half_then_hang
net = torch.nn.Linear(2, 2)
engine = Engine(lambda e, b: None)
engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(m=1.0))
AtomicCheckpointSaver(sys.argv[1], {"model": net}, save_key_metric=True, key_metric_name="m",
                      key_metric_filename="model.pt").attach(engine)
engine.run([0], max_epochs=1)
"""


def test_a_killed_save_keeps_model_pt_and_the_next_start_removes_its_temporary(tmp_path):
    from conftest import python_path

    previous = torch.nn.Linear(2, 2).state_dict()
    torch.save(previous, tmp_path / "model.pt")
    env = {**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and left[1] == "model.pt" and re.fullmatch(rf"\.model\.pt\.{proc.pid}\.[0-9a-f]{{8}}\.tmp", left[0])
    assert _equal(torch.load(tmp_path / "model.pt", weights_only=True), previous), "model.pt untouched"
    live = tmp_path / f".model.pt.{os.getpid()}.0123abcd.tmp"  # a running writer's: kept
    live.write_bytes(b"")
    AtomicCheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(2, 2)}, save_key_metric=True, key_metric_filename="model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "model.pt"]
    assert remove_stale_temporaries(tmp_path / "missing") == []


# ------------------------------------------------------------------------------ phase wrap
def test_wrap_phase_keeps_dtype_and_puts_the_boundary_at_plus_pi():
    assert wrap_phase(np.array([-np.pi]))[0] == np.pi  # float64 in, float64 out
    w = wrap_phase(np.array([-PI32, PI32, 0.5], np.float32))  # float32 +-pi: the same point, +pi
    assert w.dtype == np.float32 and np.array_equal(w, np.array([PI32, PI32, 0.5], np.float32))
    assert wrap_phase(np.array([3, -4])).dtype == np.float64  # integers wrap as float64
    np.testing.assert_allclose(wrap_phase(np.array([3 * np.pi / 2, -7.0, 20.0])),
                               [-np.pi / 2, -7.0 + 2 * np.pi, 20.0 - 6 * np.pi], atol=1e-12)
    assert np.isnan(wrap_phase(np.array([np.nan]))[0])
    t = wrap_phase(torch.tensor([-math.pi, math.pi, 4.0, -4.0]))
    assert t.dtype == torch.float32 and float(t[0]) == float(PI32) and float(t[1]) == float(PI32)
    assert torch.allclose(t[2:], torch.tensor([4.0 - 2 * math.pi, 2 * math.pi - 4.0]))
    assert wrap_phase(torch.tensor([-math.pi], dtype=torch.float64), torch.float32).dtype == torch.float32
    p = phasor_to_phase(np.array([[-1.0], [-0.0]], np.float32), dim=0)  # atan2 gives -pi here
    assert p.dtype == np.float32 and p[0] == PI32


def test_phase_sources_do_not_import_torch():
    code = "import sys, scripts.phase.sources, scripts.core.complex; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert json.loads(out.stdout.strip().lower()) is False
