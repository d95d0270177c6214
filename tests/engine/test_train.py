"""End-to-end through the CLI on tiny data: train, eval, predict, resume, faults."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from runkit import TINY

from segkit.checkpoint import load_checkpoint, load_model
from segkit.cli import eval as eval_cli
from segkit.cli import main
from segkit.config import Config
from segkit.deploy.optimize import InferenceModel
from segkit.engine.build import resolve_config
from segkit.engine.dry_run import dry_run
from segkit.engine.train import Trainer
from segkit.models import create_model


def _train(tmp_path: Path, name: str, *extra: str) -> tuple[int, Path]:
    work = tmp_path / name
    code = main(["train", *TINY, "--work-dir", str(work), *extra])
    return code, work


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_writes_the_run_folder_then_eval_and_predict(tmp_path, capsys) -> None:
    code, work = _train(tmp_path, "run", "--iters", "4", "--val-interval", "2", "--aux")
    assert code == 0
    assert (work / "config.yaml").is_file()
    records = _read_jsonl(work / "metrics.jsonl")
    assert [r["iter"] for r in records] == [2, 4]
    for key in ("mIoU", "pixel_acc", "mean_acc", "fw_iou", "per_class_iou", "loss", "lr"):
        assert key in records[-1]
    assert set(records[-1]["per_class_iou"]) == {
        "background", "circle", "square", "triangle", "star", "cross",
    }  # fmt: skip
    assert any((work / "tensorboard").iterdir())
    for plot in ("curves.png", "per_class_iou.png", "confusion_matrix.png"):
        assert Image.open(work / "plots" / plot).size[0] > 100
    best = load_checkpoint(work / "checkpoints" / "best.pt")
    assert best["meta"]["class_names"][1] == "circle"
    assert best["best_score"] == max(r["mIoU"] for r in records)
    assert "run written to" in capsys.readouterr().out

    metrics_file = tmp_path / "eval.json"
    ckpt = str(work / "checkpoints" / "last.pt")
    assert main(["eval", "--checkpoint", ckpt, "--json", str(metrics_file)]) == 0
    evaluated = json.loads(metrics_file.read_text())
    assert evaluated["mIoU"] == pytest.approx(records[-1]["mIoU"], abs=1e-6)

    images = tmp_path / "in" / "nested"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(images / "gray.jpg")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", ckpt, str(tmp_path / "in"), "--out", str(out),
                 "--overlay"])  # fmt: skip
    assert code == 0
    written = Image.open(out / "nested" / "a.png")
    assert written.mode == "P" and written.size == (53, 37)
    indices = np.asarray(written)
    assert indices.max() < 6
    # The file holds exactly the model's prediction.
    model = load_model(ckpt)
    mean = torch.tensor(model.meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.meta["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(np.array(Image.open(images / "a.png"))).permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        expected = model((x - mean) / std)["out"].argmax(1)[0].numpy()
    assert np.array_equal(indices, expected)
    assert (out / "nested" / "gray_overlay.png").is_file()


def test_predict_reports_missing_and_bad_inputs(tmp_path, capsys) -> None:
    _, work = _train(tmp_path, "run", "--iters", "1", "--val-interval", "1")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(good)
    ckpt = str(work / "checkpoints" / "last.pt")
    args = ["predict", "--checkpoint", ckpt, str(bad), str(tmp_path / "nope.png"), str(good)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "nope.png" in err
    assert (tmp_path / "out" / "good.png").is_file()
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(good)]) == 2
    assert "Weights file not found" in capsys.readouterr().err  # never a random model


def test_resume_continues_exactly(tmp_path) -> None:
    _, straight = _train(tmp_path, "straight", "--iters", "6", "--val-interval", "3")
    code, split = _train(tmp_path, "split", "--iters", "6", "--val-interval", "3",
                         "--stop-after", "2")  # fmt: skip
    assert code == 0
    assert load_checkpoint(split / "checkpoints" / "last.pt")["iteration"] == 2
    # Resume with DataLoader workers: augmentation is seeded per sample, so it must not matter.
    assert main(["train", "--resume", "--work-dir", str(split), "--workers", "2"]) == 0
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(split / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert _read_jsonl(straight / "metrics.jsonl")[-1]["mIoU"] == pytest.approx(
        _read_jsonl(split / "metrics.jsonl")[-1]["mIoU"]
    )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys) -> None:
    code, work = _train(tmp_path, "nan", "--iters", "20", "--val-interval", "1",
                        "--optimizer", "sgd", "--lr", "1e30")  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "iteration" in err and "intact" in err
    last = load_checkpoint(work / "checkpoints" / "last.pt")
    stopped = int(err.split("at iteration ")[1].split(";")[0])
    assert last["iteration"] == stopped - 1
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


def test_sigint_saves_last_and_exits_130(tmp_path, monkeypatch) -> None:
    original = Trainer.step

    def step_then_interrupt(self, images, masks, it):
        result = original(self, images, masks, it)
        if it == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "step", step_then_interrupt)
    code, work = _train(tmp_path, "sig", "--iters", "10", "--val-interval", "5")
    assert code == 128 + signal.SIGINT
    assert load_checkpoint(work / "checkpoints" / "last.pt")["iteration"] == 2


def test_freeze_bn_and_two_stage_training(tmp_path) -> None:
    _, work = _train(tmp_path, "frozen", "--iters", "4", "--val-interval", "2", "--freeze-bn",
                     "--freeze-backbone-iters", "2", "--stop-after", "2")  # fmt: skip
    initial = load_checkpoint(work / "checkpoints" / "last.pt")["state_dict"]
    # The same untrained model: seed 0 fixes the initial weights.
    torch.manual_seed(0)
    fresh = create_model(
        "deeplabv3plus",
        backbone="mobilenet_v2",
        num_classes=6,
        aux=True,
        aspp_channels=128,
        decoder_channels=128,
    ).state_dict()
    for key, value in initial.items():
        if key.startswith("backbone.") or "running_" in key:
            assert torch.equal(value, fresh[key]), f"{key} changed in stage 1"
    assert any(
        not torch.equal(v, fresh[k]) for k, v in initial.items() if k.startswith("classifier.")
    )
    assert main(["train", "--resume", "--work-dir", str(work)]) == 0
    final = load_checkpoint(work / "checkpoints" / "last.pt")["state_dict"]
    assert any(not torch.equal(final[k], fresh[k]) for k in fresh if k.startswith("backbone."))
    for key in (k for k in fresh if "running_" in k):
        assert torch.equal(final[key], fresh[key]), f"{key}: --freeze-bn must keep BN statistics"


def test_init_from_loads_matching_tensors_and_reports(tmp_path, capsys) -> None:
    _, source = _train(tmp_path, "six", "--iters", "1", "--val-interval", "1")
    root = tmp_path / "folder"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(4):
            rng = np.random.default_rng(i)
            image = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            mask = (rng.random((40, 40)) > 0.5).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    capsys.readouterr()
    code = main(["train", "--dataset", "folder", "--data-root", str(root), "--num-classes", "2",
                 "--crop-size", "32", "--batch-size", "2", "--iters", "2", "--val-interval", "2",
                 "--workers", "0", "--work-dir", str(tmp_path / "two"),
                 "--init-from", str(source / "checkpoints" / "last.pt")])  # fmt: skip
    assert code == 0
    out, err = capsys.readouterr()
    # no --model: the run builds the source's network (the shapes recipe's 128-wide head), so
    # every tensor but the classes' classifier loads
    assert "the model is the one the file describes, deeplabv3plus with backbone mobilenet_v2" \
        in err  # fmt: skip
    mismatched = re.findall(r"shape mismatch, skipped: (\S+):", out)
    assert mismatched == ["classifier.classifier.weight", "classifier.classifier.bias"]
    assert "missing (" not in out
    tuned = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    meta = tuned["meta"]
    assert len(meta["class_names"]) == 2 and meta["dataset"] == "folder"
    assert tuned["model"]["aspp_channels"] == 128 and tuned["model"]["aux"] is False


def test_init_from_with_a_model_named_loads_what_fits_it(tmp_path, capsys) -> None:
    _, source = _train(tmp_path, "src", "--iters", "1", "--val-interval", "1")
    capsys.readouterr()
    last = str(source / "checkpoints" / "last.pt")
    code, _ = _train(
        tmp_path, "other", "--iters", "1", "--init-from", last, "--set", "model.aspp_channels=64"
    )
    assert code == 0
    out, err = capsys.readouterr()
    assert "the file describes" not in err  # --model given (TINY): the named model is built
    assert "shape mismatch, skipped: classifier.aspp.convs.0.0.weight" in out


def test_sync_bn_on_cpu_is_refused(tmp_path, capsys) -> None:
    code, _ = _train(tmp_path, "sync", "--iters", "1", "--sync-bn", "--device", "cpu")
    assert code == 2
    assert "SyncBatchNorm has no CPU kernel" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "train.lrr=0.1"], "Unknown config key: 'train.lrr'. Did you mean ['train.lr']"),
        (["--iters", "many"], "train.iters: 'many'"),
        (["--model", "unet", "--iters", "1"], "Unknown model 'unet'"),
        (["--set", "train.label_smoothing=1.5"], "train.label_smoothing=1.5: must be <= 1"),
        (  # reaches the loss the run builds, which says what to change
            ["--loss", "focal", "--set", "train.label_smoothing=0.1", "--iters", "1"],
            "the focal loss has no cross-entropy for label_smoothing=0.1: choose the ce or "
            "ce+dice loss",
        ),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv: list[str], message: str) -> None:
    code, _ = _train(tmp_path, "x", *argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("segkit train: error: ") and message in err
    assert "Traceback" not in err


def test_missing_data_root_is_named(tmp_path, capsys) -> None:
    argv = ["train", "--dataset", "voc", "--data-root", str(tmp_path / "nowhere")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "VOC" in err


def test_epochs_auto_class_weights_focal_and_cpu_amp(tmp_path) -> None:
    code, work = _train(tmp_path, "opts", "--epochs", "1", "--class-weights", "auto",
                        "--loss", "focal", "--amp", "--val-interval", "100")  # fmt: skip
    assert code == 0
    resolved = Config.load(work / "config.yaml")
    assert resolved.train.iters == 16 // 4  # one epoch of 16 samples at batch 4
    weights = resolved.train.class_weights
    assert isinstance(weights, list) and len(weights) == 6
    assert weights[0] == min(weights)  # background, the most frequent class, weighs least
    assert _read_jsonl(work / "metrics.jsonl")[-1]["iter"] == 4


def test_eval_protocols_and_predict_glob(tmp_path) -> None:
    _, work = _train(tmp_path, "proto", "--iters", "1", "--val-interval", "1")
    ckpt = str(work / "checkpoints" / "last.pt")
    whole, tta = tmp_path / "whole.json", tmp_path / "tta.json"
    assert main(["eval", "--checkpoint", ckpt, "--json", str(whole)]) == 0
    argv = ["eval", "--checkpoint", ckpt, "--mode", "slide", "--window", "32", "--stride", "16",
            "--scales", "0.75,1.0,1.25", "--flip", "--json", str(tta)]  # fmt: skip
    assert main(argv) == 0
    a, b = json.loads(whole.read_text()), json.loads(tta.read_text())
    metric_keys = {"mIoU", "pixel_acc", "mean_acc", "fw_iou", "per_class_iou", "per_class_acc"}
    assert metric_keys <= set(a) and metric_keys <= set(b)
    # ... and what produced them (the protocol as given; tests/test_eval_save_dir.py has more).
    assert a["inference"]["mode"] == "whole" and b["inference"]["mode"] == "slide"
    assert (b["inference"]["window"], b["inference"]["scales"]) == (32, [0.75, 1.0, 1.25])
    # The flags reach the inference options (their effect is tested in test_inference.py).
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    config = eval_cli.run_config(parser.parse_args(argv[1:]), load_checkpoint(ckpt))
    assert (config.eval.mode, config.eval.window, config.eval.stride) == ("slide", 32, 16)
    assert config.eval.scales == [0.75, 1.0, 1.25] and config.eval.flip is True
    # eval runs the fast path; bf16 is the opt-in reduced precision, not for ONNX files.
    runner = eval_cli.runtime_model(parser.parse_args(argv[1:]), load_model(ckpt))
    assert isinstance(runner, InferenceModel) and runner.dtype == torch.float32
    bf16 = tmp_path / "bf16.json"
    assert main(["eval", "--checkpoint", ckpt, "--precision", "bf16", "--json", str(bf16)]) == 0
    assert 0 <= json.loads(bf16.read_text())["mIoU"] <= 1
    argv = ["eval", "--checkpoint", ckpt, "--runtime", "onnxruntime", "--onnx", "m.onnx",
            "--precision", "bf16"]  # fmt: skip
    assert main(argv) == 2

    for name in ("x1.png", "x2.png", "skip.txt"):
        (tmp_path / name).write_bytes(b"")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x1.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x2.png")
    out = tmp_path / "globbed"
    assert main(["predict", "--checkpoint", ckpt, str(tmp_path / "x*.png"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x1.png", "x2.png"]


def _tiny_config(**values: object) -> Config:
    config = Config()
    config.update({
        "model.name": "deeplabv3plus", "model.backbone": "mobilenet_v2", "model.aux": True,
        "data.dataset": "shapes", "data.length": 16, "data.val_length": 8,
        "data.image_size": 48, "data.crop_size": 40, "data.workers": 0,
        "train.batch_size": 4, "train.device": "cpu", **values,
    })  # fmt: skip
    return config


def test_resolve_config_fills_in_the_run_on_a_copy() -> None:
    config = _tiny_config(**{"train.epochs": 3, "train.class_weights": "auto"})
    before = config.to_dict()
    resolved = resolve_config(
        config, work_dir=Path("runs/x"), train_size=19, class_weights=[0.5, 2.0], world=2
    )
    assert config.to_dict() == before  # the input is left as it was
    assert resolved.work_dir == "runs/x"
    assert resolved.train.iters == 3 * ((19 // 2) // 4)  # each process draws 9 samples/epoch
    assert resolved.train.backbone_lr_mult == 1.0  # trained from scratch: the full rate
    assert resolved.train.class_weights == [0.5, 2.0]
    config.update({"model.pretrained_backbone": "weights/x.pth", "train.epochs": None})
    again = resolve_config(config, work_dir=Path("w"), train_size=19, class_weights=[1.0])
    assert again.train.backbone_lr_mult == 0.1  # a pretrained backbone learns at a tenth
    assert again.train.iters == 1000  # no length given: 200 epochs of 19 // 4, at least 1000
    with pytest.raises(ValueError, match="class_weights='auto' needs the resolved weights"):
        resolve_config(config, work_dir=Path("w"), train_size=19, class_weights=None)


def test_dry_run_reports_without_writing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default run folder would be runs/... here
    lines = dry_run(_tiny_config(**{"train.epochs": 2}))
    report = "\n".join(lines)
    assert list(tmp_path.iterdir()) == []  # no run folder, no lock
    assert "16 training samples" in report and "8 validation samples" in report
    assert "recipe:   8 iterations (2 epochs of 4)" in report
    total = sum(p.numel() for p in create_model(  # from scratch: the lighter head
        "deeplabv3plus", backbone="mobilenet_v2", num_classes=6, aux=True, separable=True,
        decoder_convs=1).parameters()
    )  # fmt: skip
    assert f"{total:,} parameters ({total:,} trainable)" in report
    assert "first batch: images (4, 3, 40, 40) float32, masks (4, 40, 40) int64" in report
    assert "model outputs for 2 image(s) (eval mode): out (2, 6, 40, 40) float32" in report
    assert "work dir: runs/shapes_deeplabv3plus_mobilenet_v2_" in report
