"""Planted faults in checkpoint and export files: each is one line naming the file and the fix
(exit status 2 through the CLI), nothing is lost, and an export knows its checkpoint."""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from segkit.checkpoint import (
    CheckpointWriteError,
    load_checkpoint,
    load_model,
    remove_stale_temporaries,
    save_checkpoint,
)
from segkit.cli import main
from segkit.cli.common import check_onnx_origin
from segkit.config import Config
from segkit.deploy.onnx import FINGERPRINT_KEY, META_KEY, export, export_metadata
from segkit.models import create_model
from segkit.weights import read_state_dict, weights_fingerprint

META = {
    "class_names": ["background", "circle", "square", "triangle", "star", "cross"],
    "palette": [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                [245, 130, 48]],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "ignore_index": 255,
    "dataset": "shapes",
}  # fmt: skip
NOISE = random.Random(0).randbytes(4096)  # fixed "random bytes": a failure reproduces
TINY_RUN = {"data.val_length": 2, "data.image_size": 48, "data.workers": 0}
TINY_TRAIN = [
    "--model", "deeplabv3plus", "--backbone", "mobilenet_v2", "--set", "data.length=4",
    "--set", "data.val_length=2", "--set", "data.image_size=48", "--crop-size", "40",
    "--batch-size", "2", "--workers", "0", "--iters", "1",
]  # fmt: skip


def _payload(seed: int, backbone: str = "mobilenet_v2") -> dict:
    """What `segkit train` writes, for an untrained FCN on the shapes dataset."""
    torch.manual_seed(seed)
    model = create_model("fcn", backbone=backbone, num_classes=6)
    config = Config()
    config.update(TINY_RUN)
    return {
        "model": model.config,
        "state_dict": model.state_dict(),
        "meta": META,
        "config": config.to_dict(),
        "iteration": 1,
        "best_score": 0.0,
    }


class Tiny(torch.nn.Module):
    """A segmenter small enough to export in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.meta = dict(META, class_names=META["class_names"][:3], palette=META["palette"][:3])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.bn(self.conv(x))}


def _one_line_error(capsys, path: Path | str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in err and "Traceback" not in err and "weights_only=False" not in err
    return err


# -- files that are not a readable segkit checkpoint ------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "best.pt"
    save_checkpoint(path, _payload(0))
    return path


def _empty(path: Path, good: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path, good: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random(path: Path, good: Path) -> None:
    path.write_bytes(NOISE)


def _torchscript(path: Path, good: Path) -> None:
    tmp = path.with_name("export.pt")
    export(Tiny().eval(), tmp, format="torchscript", static=(8, 8))
    tmp.rename(path)


def _onnx(path: Path, good: Path) -> None:
    node = helper.make_node("Identity", ["image"], ["output"])
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])
    onnx.save(helper.make_model(helper.make_graph([node], "g", [image], [output])), path)


def _unsafe(path: Path, good: Path) -> None:
    # An object of a class: unpickling it imports and runs that class's module.
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, path)


def _without(*keys: str):
    def write(path: Path, good: Path) -> None:
        data = load_checkpoint(good)
        for key in keys:
            parent, _, leaf = key.rpartition(".")
            (data[parent] if parent else data).pop(leaf)
        torch.save(data, path)

    return write


FAULTS = {
    "empty": (_empty, "is empty (0 bytes): the save or copy was interrupted"),
    "truncated": (_truncated, "is truncated"),
    "random": (_random, "truncated, corrupt or another kind of file"),
    "torchscript": (_torchscript, "is a TorchScript export"),
    "onnx": (_onnx, "is an ONNX export, not a checkpoint: to evaluate or predict with it use "
             "`--runtime onnxruntime --onnx"),
    "unsafe": (_unsafe, "could run arbitrary code"),
    "no-model": (_without("model"), "lacks model: it was not written by `segkit train`"),
    "no-weights": (_without("state_dict"), "lacks state_dict:"),
    "no-meta": (_without("meta"), "lacks meta:"),
    "no-palette": (_without("meta.palette", "meta.std"), "lacks meta.palette, meta.std:"),
}  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS)
def test_bad_checkpoint_is_one_line_in_eval_predict_export(fault, good, tmp_path, capsys):
    plant, expected = FAULTS[fault]
    bad = tmp_path / "best.pt"
    plant(bad, good)
    before = bad.read_bytes()
    image = tmp_path / "in.png"
    image.write_bytes(b"")
    commands = {
        "eval": [],
        "predict": [str(image), "--out", str(tmp_path / "pred")],
        "export": ["--out", str(tmp_path / "m.onnx")],
    }
    for command, extra in commands.items():
        assert main([command, "--checkpoint", str(bad), *extra]) == 2
        err = _one_line_error(capsys, bad)
        assert err.startswith(f"segkit {command}: error: ") and expected in err
    with pytest.raises(ValueError, match="Refused to load" if fault == "unsafe" else str(bad)):
        load_model(bad)
    assert bad.read_bytes() == before  # nothing was lost ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "in.png"]  # ... or written


@pytest.mark.parametrize("fault", ["random", "truncated", "empty"])
def test_bad_safetensors_is_one_clear_error(fault, tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"conv.weight": torch.zeros(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes({"random": NOISE, "truncated": data[: len(data) // 2],
                      "empty": b""}[fault])  # fmt: skip
    expected = {"random": "is not a readable safetensors file", "truncated": "truncated "
                "safetensors file", "empty": "is empty (0 bytes)"}[fault]  # fmt: skip
    with pytest.raises(ValueError, match="weights.safetensors") as caught:
        read_state_dict(path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_bad_init_from_and_resume_are_one_line(tmp_path, capsys) -> None:
    weights = tmp_path / "imagenet.safetensors"
    weights.write_bytes(NOISE)
    work = tmp_path / "run"
    assert main(["train", *TINY_TRAIN, "--init-from", str(weights), "--work-dir", str(work)]) == 2
    _one_line_error(capsys, weights)
    assert not (work / "checkpoints").exists()

    last = work / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    save_checkpoint(last, _payload(0))
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    assert main(["train", "--resume", "--work-dir", str(work)]) == 2
    assert "is truncated" in _one_line_error(capsys, last)
    assert last.read_bytes() == data[: len(data) // 2]


def test_load_model_names_weights_that_do_not_fit(good, tmp_path) -> None:
    data = load_checkpoint(good)
    data["model"]["num_classes"] = 5  # an edited file: the head no longer fits its weights
    edited = tmp_path / "edited.pt"
    torch.save(data, edited)
    with pytest.raises(ValueError, match=r"edited\.pt: its weights do not fit .*size mismatch"):
        load_model(edited)


# -- writing: permissions, failed writes, kill -9 ---------------------------------------------


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_saved_files_follow_the_umask(umask_027, tmp_path) -> None:
    save_checkpoint(tmp_path / "last.pt", {"state_dict": {"w": torch.zeros(2)}})
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o640
    model = Tiny().eval()
    images = [torch.randn(1, 3, 8, 8) for _ in range(2)]
    export(model, tmp_path / "m.onnx", static=(8, 8))
    export(model, tmp_path / "q.onnx", static=(8, 8), int8=True, calibration=images,
           min_agreement=0)  # fmt: skip
    export(model, tmp_path / "m.pt", format="torchscript", static=(8, 8))
    for name in ("m.onnx", "q.onnx", "m.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "m.onnx", "m.pt", "q.onnx"]


WRITE_OVER_THE_LIMIT = """
import resource, signal, sys, torch
from segkit.checkpoint import CheckpointWriteError, save_checkpoint
from segkit.cli import one_line

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_checkpoint(sys.argv[1], {"state_dict": {"w": torch.ones(1_000_000)}})
except CheckpointWriteError as err:
    print(one_line(err))
    sys.exit(2)
"""


def test_failed_write_is_one_line_and_keeps_the_previous_file(tmp_path) -> None:
    target = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(target, {"state_dict": {"w": torch.zeros(10)}})
    previous = target.read_bytes()
    done = subprocess.run(
        [sys.executable, "-c", WRITE_OVER_THE_LIMIT, str(target)], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert f"could not write checkpoint {target}: file too large" in lines[0]
    assert "the previous last.pt is intact" in lines[0]
    assert target.read_bytes() == previous
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]


def test_full_disk_says_how_much_is_free(tmp_path, monkeypatch) -> None:
    def no_space(fd: int) -> None:  # what a full disk reports when the data reaches it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    target = tmp_path / "best.pt"
    with pytest.raises(CheckpointWriteError) as caught:
        save_checkpoint(target, {"state_dict": {"w": torch.zeros(10)}})
    message = str(caught.value)
    assert message.startswith(f"could not write checkpoint {target}: no space left on device (")
    assert "free on that disk); nothing was written" in message and "\n" not in message
    assert caught.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


SAVE_FOREVER = """
import sys, torch
from segkit.checkpoint import save_checkpoint

payload = {"state_dict": {"w": torch.arange(8_000_000, dtype=torch.float32)}}
while True:
    save_checkpoint(sys.argv[1], payload)
"""


def _kill_mid_save(target: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(target)])
    try:
        for _ in range(100_000):  # wait (polling, no clock) until a save is under way
            if any(p.stat().st_size > 0 for p in target.parent.glob(".*.tmp")):
                break
            assert process.poll() is None, "the saving process died"
            time.sleep(0.002)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def test_kill_during_save_leaves_old_or_new_file_and_temporaries_are_removed(tmp_path) -> None:
    target = tmp_path / "checkpoints" / "last.pt"
    target.parent.mkdir()
    for _ in range(3):  # a kill can land just after a rename; then no temporary is left
        _kill_mid_save(target)
        leftovers = sorted(target.parent.glob(".last.pt.*.tmp"))
        if leftovers:
            break
    assert leftovers
    if target.exists():
        weights = read_state_dict(target)["w"]
        assert torch.equal(weights, torch.arange(8_000_000, dtype=torch.float32))
    (target.parent / "notes.tmp").write_text("not a temporary of save_checkpoint")
    assert remove_stale_temporaries(target.parent) == leftovers
    remaining = sorted(p.name for p in target.parent.iterdir())
    assert remaining in (["notes.tmp"], ["last.pt", "notes.tmp"])
    assert remove_stale_temporaries(tmp_path / "missing") == []


# -- exports know their checkpoint --------------------------------------------------------------


def test_exports_record_fingerprint_and_meta(tmp_path) -> None:
    model = Tiny().eval()
    fingerprint = weights_fingerprint(model)
    images = [torch.randn(1, 3, 8, 8) for _ in range(2)]
    for name, options in (("m.onnx", {}), ("q.onnx", {"int8": True, "calibration": images,
                                                     "min_agreement": 0})):  # fmt: skip
        report = export(model, tmp_path / name, static=(8, 8), **options)
        props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
        assert props[FINGERPRINT_KEY] == fingerprint, name
        meta = json.loads(props[META_KEY])
        assert meta["class_names"] == ["background", "circle", "square"]
        assert meta["mean"] == META["mean"] and meta["ignore_index"] == 255
        assert meta["input"]["shape"] == ["N", 3, 8, 8] and meta["output"]["kind"] == "logits"
    files = {"segkit.weights_fingerprint": "", "segkit.meta": ""}
    export(model, tmp_path / "m.pt", format="torchscript", argmax=True, static=(8, 8))
    torch.jit.load(str(tmp_path / "m.pt"), _extra_files=files)
    assert files["segkit.weights_fingerprint"] == fingerprint.encode()
    assert json.loads(files["segkit.meta"])["output"]["kind"] == "argmax"


def test_fingerprint_identifies_the_weights(good) -> None:
    data = load_checkpoint(good)
    model = load_model(good)
    assert weights_fingerprint(data["state_dict"]) == weights_fingerprint(model)
    state = dict(data["state_dict"])
    name = next(iter(state))
    state[name] = state[name].clone()
    assert weights_fingerprint(state) == weights_fingerprint(model)
    state[name].view(-1)[0] += 1
    assert weights_fingerprint(state) != weights_fingerprint(model)
    state[name] = data["state_dict"][name].double()
    assert weights_fingerprint(state) != weights_fingerprint(model)


def test_onnx_origin_check_on_planted_metadata(capsys) -> None:
    model = Tiny()
    args = argparse.Namespace(onnx="m.onnx", checkpoint="best.pt", command="predict")
    identity = export_metadata(model, argmax=False, static=None)
    check_onnx_origin(identity, model, args)  # exported from these weights: silent
    assert capsys.readouterr().err == ""
    check_onnx_origin({}, model, args)
    err = capsys.readouterr().err
    assert err.startswith("segkit predict: warning: m.onnx records no weights fingerprint")
    assert len(err.splitlines()) == 1
    with torch.no_grad():
        model.conv.weight[0, 0, 0, 0] += 1  # one weight changed: another checkpoint
    with pytest.raises(ValueError, match="m.onnx was exported from another checkpoint"):
        check_onnx_origin(identity, model, args)
    argmax = export_metadata(model, argmax=True, static=None)
    with pytest.raises(ValueError, match="m.onnx outputs class indices"):
        check_onnx_origin(argmax, model, args)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exported")
    files = {"a": folder / "a.pt", "b": folder / "b.pt", "onnx": folder / "a.onnx"}
    save_checkpoint(files["a"], _payload(0, "timm:resnet18"))
    save_checkpoint(files["b"], _payload(1, "timm:resnet18"))
    argv = ["export", "--checkpoint", str(files["a"]), "--out", str(files["onnx"]),
            "--static", "48x48"]  # fmt: skip
    assert main(argv) == 0
    return files


def test_onnx_of_another_checkpoint_is_refused(exported, capsys) -> None:
    capsys.readouterr()
    props = {p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}
    weights = load_checkpoint(exported["a"])["state_dict"]
    assert props[FINGERPRINT_KEY] == weights_fingerprint(weights)
    for command in ("eval", "predict"):
        argv = [command, "--checkpoint", str(exported["b"]), "--runtime", "onnxruntime",
                "--onnx", str(exported["onnx"])]  # fmt: skip
        if command == "predict":
            argv += [str(exported["b"]), "--out", str(exported["b"].parent / "pred")]
        assert main(argv) == 2
        err = _one_line_error(capsys, exported["onnx"])
        assert "was exported from another checkpoint than" in err
        assert f"`segkit export --checkpoint {exported['b']} --out {exported['onnx']}`" in err
    # A checkpoint given as --onnx: one line from ONNX Runtime's refusal.
    argv = ["eval", "--checkpoint", str(exported["a"]), "--runtime", "onnxruntime",
            "--onnx", str(exported["b"])]  # fmt: skip
    assert main(argv) == 2
    assert "is not an ONNX model ONNX Runtime can load" in _one_line_error(capsys, exported["b"])


def test_onnx_without_fingerprint_warns_once_and_runs(exported, tmp_path, capsys) -> None:
    proto = onnx.load(str(exported["onnx"]))
    del proto.metadata_props[:]
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    metrics = tmp_path / "metrics.json"
    argv = ["eval", "--checkpoint", str(exported["a"]), "--runtime", "onnxruntime",
            "--onnx", str(old), "--json", str(metrics)]  # fmt: skip
    assert main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "records no weights fingerprint" in warnings[0]
    assert 0 <= json.loads(metrics.read_text())["mIoU"] <= 1


# -- segkit export --out ----------------------------------------------------------------------


def test_export_out_must_be_a_writable_file(good, tmp_path, capsys) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    assert main(["export", "--checkpoint", str(good), "--out", str(folder)]) == 2
    err = _one_line_error(capsys, folder)
    assert f"--out {folder} names a folder; give a file such as {folder / 'model.onnx'}" in err
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    out = a_file / "sub" / "model.onnx"
    assert main(["export", "--checkpoint", str(good), "--out", str(out)]) == 2
    assert f"{a_file} is a file, not a folder" in _one_line_error(capsys, out)


def test_export_out_in_a_read_only_folder(good, capsys, read_only_dir) -> None:
    out = read_only_dir / "model.onnx"
    assert main(["export", "--checkpoint", str(good), "--out", str(out)]) == 2
    assert f"the folder {read_only_dir} is not writable" in _one_line_error(capsys, out)
    assert not out.exists()
