"""`segkit convert` and the conversion framework, on torchvision's segmentation models.

torchvision is an independent implementation that is installed here, so these tests measure
parity against the real models, not against recorded facts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from convertkit import randomize, relative_difference

import segkit
from segkit.checkpoint import load_checkpoint
from segkit.cli import main
from segkit.convert import ConversionError, convert, detect, foreign_weights, open_checkpoint

SIZES = ((65, 65), (49, 83))


def torchvision_model(name: str, **kwargs) -> torch.nn.Module:
    build = getattr(torchvision.models.segmentation, name)
    torch.manual_seed(0)
    model = build(weights=None, weights_backbone=None, num_classes=21, **kwargs)
    return randomize(model)


@pytest.fixture(scope="module")
def deeplab_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """torchvision deeplabv3_resnet50 with an auxiliary head, saved as torchvision saves it."""
    model = torchvision_model("deeplabv3_resnet50", aux_loss=True)
    path = tmp_path_factory.mktemp("tv") / "deeplabv3_resnet50.pth"
    torch.save(model.state_dict(), path)
    return path, model


def outputs_close(reference: torch.nn.Module, model: torch.nn.Module) -> float:
    worst = 0.0
    with torch.no_grad():
        for size in SIZES:
            x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(size[1]))
            worst = max(worst, relative_difference(reference(x)["out"], model(x)["out"]))
    return worst


def test_torchvision_fcn_same_outputs() -> None:
    reference = torchvision_model("fcn_resnet50")
    conversion = convert({"state_dict": reference.state_dict()})
    assert conversion.options == {
        "name": "fcn",
        "backbone": "resnet50",
        "num_classes": 21,
        "output_stride": 8,
        "aux": False,
    }
    assert outputs_close(reference, conversion.model) < 1e-5


@pytest.mark.parametrize(
    ("name", "model", "depth"),
    [
        ("fcn_resnet101", "fcn", 101),
        ("deeplabv3_resnet101", "deeplabv3", 101),
        ("deeplabv3_resnet50", "deeplabv3", 50),
    ],
)
def test_torchvision_detection(name: str, model: str, depth: int) -> None:
    with torch.device("meta"):
        reference = getattr(torchvision.models.segmentation, name)(
            weights=None, weights_backbone=None, num_classes=7, aux_loss=True
        )
    found = detect(reference.state_dict())
    assert found.source == "torchvision"
    assert found.model["name"] == model
    assert found.model["backbone"] == f"resnet{depth}"
    assert found.model["num_classes"] == 7
    assert found.details["aux"] is True


def test_cli_writes_a_checkpoint_load_model_uses(deeplab_file, tmp_path, capsys) -> None:
    path, reference = deeplab_file
    out = tmp_path / "converted.pt"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "detected: torchvision (model: deeplabv3, backbone: ResNet-50, classes: 21" in printed
    assert "output_stride=8" in printed
    assert "loaded 370 tensors" in printed
    model = segkit.load_model(out)
    assert model.meta["class_names"][1] == "aeroplane"  # 21 classes: VOC's, said so
    assert "guessed from the class count" in printed
    assert load_checkpoint(out)["config"]["data"]["dataset"] == "voc"
    assert outputs_close(reference, model) < 1e-5


def test_dataset_flag_and_generic_names(deeplab_file, tmp_path) -> None:
    path, _ = deeplab_file
    conversion = convert(path, dataset=None)
    assert conversion.model.meta["dataset"] == "voc"
    with pytest.raises(ConversionError, match="--dataset cityscapes has 19 classes"):
        convert(path, dataset="cityscapes")
    state = torchvision_model("fcn_resnet50").state_dict()
    state = {k: v[:5] if k.startswith("classifier.4.") else v for k, v in state.items()}
    meta = convert(state).model.meta
    assert meta["class_names"] == [f"class_{i}" for i in range(5)]
    assert len(meta["palette"]) == 5


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("drop", "tensors of the model stay unfilled: backbone.layer2.0.bn1.running_var"),
        ("extra", "tensors of the file have no place: head.extra.weight"),
    ],
)
def test_planted_fault_exits_2_and_writes_nothing(
    deeplab_file, tmp_path, capsys, fault, message
) -> None:
    _, reference = deeplab_file
    state = reference.state_dict()
    if fault == "drop":
        del state["backbone.layer2.0.bn1.running_var"]
    else:
        state["head.extra.weight"] = torch.zeros(3)
    damaged = tmp_path / "damaged.pth"
    torch.save({"state_dict": state}, damaged)
    out = tmp_path / "out.pt"
    assert main(["convert", str(damaged), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Nothing was written" in err
    assert not out.exists()


def test_unknown_layout_says_what_was_tried(tmp_path, capsys) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    assert main(["convert", str(path), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "matches no known layout" in err
    assert "It holds 122 tensors under conv1.* (1), bn1.* (5), layer1.* (24)" in err
    for project in ("VainF/DeepLabV3Plus-Pytorch", "torchvision (torchvision)"):
        assert project in err
    assert "--init-from" in err
    assert not (tmp_path / "x.pt").exists()


def test_refusals(deeplab_file, tmp_path, capsys) -> None:
    path, _ = deeplab_file
    assert main(["convert", str(path), "--out", str(path)]) == 2
    assert "is the source file" in capsys.readouterr().err
    assert main(["convert", str(path), "--out", str(tmp_path / "a.pt"), "--num-classes", "3"]) == 2
    assert "has 21 outputs" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "b.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    converted = tmp_path / "c.pt"
    assert main(["convert", str(path), "--out", str(converted)]) == 0
    assert main(["convert", str(converted), "--out", str(tmp_path / "d.pt")]) == 2
    assert "already a segkit checkpoint" in capsys.readouterr().err
    assert main(["convert", str(path), "--out", str(tmp_path / "e.pt"), "--from", "jfzhang95"]) == 2
    assert "is not a jfzhang95/pytorch-deeplab-xception checkpoint" in capsys.readouterr().err


def test_foreign_file_is_converted_in_memory(deeplab_file, tmp_path, capsys) -> None:
    path, reference = deeplab_file
    notes: list[str] = []
    checkpoint = open_checkpoint(path, note=notes.append)
    assert checkpoint["model"]["name"] == "deeplabv3"
    assert notes == [
        f"{path} is a torchvision deeplabv3 resnet50 (21 classes) checkpoint: converted in "
        f"memory (`segkit convert {path} --out FILE.pt` writes it once)"
    ]
    weights = foreign_weights(path)
    key = "classifier.4.weight"
    assert torch.equal(weights[key], reference.state_dict()[key])
    # Anything else is left to load_weights (by name and shape): a plain backbone file.
    plain = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), plain)
    assert foreign_weights(plain) is None


def test_predict_with_a_foreign_checkpoint(deeplab_file, tmp_path, capsys) -> None:
    from PIL import Image

    path, _ = deeplab_file
    Image.new("RGB", (45, 37), (90, 140, 30)).save(tmp_path / "a.png")
    converted = tmp_path / "converted.pt"
    assert main(["convert", str(path), "--out", str(converted)]) == 0
    capsys.readouterr()
    for name, checkpoint in (("foreign", path), ("segkit", converted)):
        argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png")]
        assert main([*argv, "--out", str(tmp_path / name)]) == 0
    assert "converted in memory" in capsys.readouterr().err
    first = Image.open(tmp_path / "foreign" / "a.png")
    second = Image.open(tmp_path / "segkit" / "a.png")
    assert list(first.get_flattened_data()) == list(second.get_flattened_data())


def test_init_from_a_foreign_file(tmp_path) -> None:
    """A VainF DeepLabV3+ MobileNetV2 file (21 classes) as --init-from of a 6-class run: the
    backbone and the matching head tensors come from it, converted in memory."""
    from convertkit import layouts, to_source
    from runkit import train

    torch.manual_seed(3)
    options = {"decoder_convs": 1, "pad_block_input": True, "pad_stem": False}
    source_model = randomize(
        segkit.create_model(
            "deeplabv3plus", backbone="mobilenet_v2", num_classes=21, aspp_dropout=0.1, **options
        )
    )
    state = to_source(source_model, layouts("vainf")["deeplabv3plus_mobilenet"], "vainf")
    path = tmp_path / "best_deeplabv3plus_mobilenet_voc_os16.pth"
    torch.save({"model_state": state, "cur_itrs": 30000, "best_score": 0.7}, path)
    work = tmp_path / "run"
    flags = [f"--set=model.{k}={v}" for k, v in options.items()]
    assert train(work, "--init-from", str(path), "--iters", "1", *flags) == 0
    log = (work / "train.log").read_text()
    assert "is a VainF/DeepLabV3Plus-Pytorch deeplabv3plus mobilenet_v2 (21 classes)" in log
    assert "converted in memory" in log
    tuned = segkit.load_model(work / "checkpoints" / "last.pt")
    # One SGD step later the first stem conv is still close to the file's, far from random.
    first = "backbone.features.0.0.weight"
    delta = (tuned.state_dict()[first] - source_model.state_dict()[first]).abs().max()
    assert delta < 0.05


def test_init_from_a_foreign_file_without_a_model_builds_the_files_network(
    tmp_path, capsys
) -> None:
    """Without ``--model``, ``--init-from`` a VainF file trains VainF's network (its one
    decoder conv, dropout 0.1, the block padding of its MobileNetV2), not segkit's default:
    every tensor but the 21-class classifier loads."""
    from convertkit import layouts, to_source

    options = {"decoder_convs": 1, "aspp_dropout": 0.1, "pad_block_input": True}
    source_model = segkit.create_model(
        "deeplabv3plus", backbone="mobilenet_v2", num_classes=21, pad_stem=False, **options
    )
    state = to_source(source_model, layouts("vainf")["deeplabv3plus_mobilenet"], "vainf")
    path = tmp_path / "best_deeplabv3plus_mobilenet_voc_os16.pth"
    torch.save({"model_state": state}, path)
    work = tmp_path / "run"
    tiny = ["--set", "data.length=8", "--set", "data.val_length=4", "--no-aux", "--set",
            "data.image_size=48", "--crop-size", "40", "--batch-size", "4",
            "--workers", "0"]  # fmt: skip
    assert main(["train", *tiny, "--init-from", str(path), "--iters", "1",
                 "--work-dir", str(work)]) == 0  # fmt: skip
    assert "the model is the one the file describes, deeplabv3plus" in capsys.readouterr().err
    log = (work / "train.log").read_text()
    assert re.findall(r"shape mismatch, skipped: (\S+):", log) == [
        "classifier.classifier.weight", "classifier.classifier.bias"]  # fmt: skip
    assert "missing (" not in log and "unexpected (" not in log
    built = load_checkpoint(work / "checkpoints" / "last.pt")["model"]
    assert {key: built[key] for key in options} == options
    assert "recipe continuing" in log and built.get("separable", False) is False
