"""Training at batch size 1: every model of the zoo, the pooled-BN rule, DDP with 1 image/rank.

A global average pool leaves one value per channel per image, and ``nn.BatchNorm2d`` refuses to
train on a single value ("Expected more than 1 value per channel when training"). Running a
train-mode forward and backward at batch 1 over every model, backbone family and head option
found one such layer in the zoo: the BN of ASPP's image-pooling branch (DeepLabV3, DeepLabV3+).
EncNet's BatchNorm1d sees ``N x K x C`` (C values per code) and the attention blocks have no
batch-statistics layer. That BN is a :class:`PooledBatchNorm2d`, whose rule is tested here.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import segkit
from segkit.models import JPU_MODELS, head_options
from segkit.models.attention import ATTENTIONS
from segkit.models.backbones import HRNETS, RESNETS
from segkit.models.layers import PooledBatchNorm2d

NUM_CLASSES = 3
SIZE = 64  # stride-32 maps are 2 x 2: only pooled maps offer one value per channel
ONE_VALUE = "Expected more than 1 value per channel when training"

# One case per backbone family and per head option, mostly on the cheap timm:resnet18.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("fcn", "timm:resnet18", {"aux": True, "attention": "psa"}),
    ("fcn", "timm:resnet18", {"jpu": True, "attention": "se"}),
    ("fcn8s", "timm:resnet18", {"aux": True}),
    ("deeplabv3", "timm:resnet18", {"aux": True, "attention": "cbam"}),
    ("deeplabv3", "timm:resnet18", {"jpu": True, "separable": True, "attention": "psa"}),
    ("deeplabv3", "resnet50", {"output_stride": 8, "multi_grid": (1, 2, 4)}),
    ("deeplabv3plus", "timm:resnet18", {"aux": True, "attention": "se"}),
    ("deeplabv3plus", "mobilenet_v2", {"separable": True, "attention": "cbam"}),
    ("deeplabv3plus", "xception65", {}),
    ("deeplabv3plus", "hrnetv2_w18", {"aux": True}),
    (
        "encnet",
        "timm:resnet18",
        {"lateral": True, "se_loss": True, "aux": True, "attention": "psa"},
    ),
    ("encnet", "timm:resnet18", {"jpu": True, "lateral": True, "se_loss": True}),
    ("encnet", "resnet50s", {"jpu": True, "input_kernel_size": 1, "se_loss": True}),
]


def _family(backbone: str) -> str:
    if backbone in RESNETS:
        return "resnet"
    if backbone in ("resnet50s", "resnet101s"):
        return "resnet_deep_stem"
    return "hrnetv2" if backbone in HRNETS else backbone


def _case_id(name: str, backbone: str, options: dict[str, Any]) -> str:
    return "-".join([name, backbone, *(k if v is True else f"{k}={v}" for k, v in options.items())])


def _build(name: str, backbone: str, **options: Any) -> nn.Module:
    torch.manual_seed(0)
    model = segkit.create_model(name, backbone=backbone, num_classes=NUM_CLASSES, **options)
    # timm zero-initialises the last BN of each residual block, which blocks gradients at
    # initialisation only; random BN scales test the wiring instead. (Plain code, not the
    # randomize_bn fixture: the DDP test builds models in spawned processes.)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
    return model


def _pooled_bns(model: nn.Module) -> dict[str, PooledBatchNorm2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PooledBatchNorm2d)}


def _with_plain_batchnorm(model: nn.Module) -> nn.Module:
    """Planted fault: every PooledBatchNorm2d back to an ``nn.BatchNorm2d`` with its state."""
    for name, bn in _pooled_bns(model).items():
        plain = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum)
        plain.load_state_dict(bn.state_dict())
        model.set_submodule(name, plain)
    return model


@pytest.mark.parametrize(("name", "backbone", "options"), [
    pytest.param(*case, id=_case_id(*case)) for case in CASES
])  # fmt: skip
def test_trains_at_batch_one(
    name: str, backbone: str, options: dict[str, Any], check_outputs: Any
) -> None:
    model = _build(name, backbone, **options).train()
    out = model(torch.randn(1, 3, SIZE, SIZE))
    aux, se = bool(options.get("aux")), bool(options.get("se_loss"))
    check_outputs(out, (1, NUM_CLASSES, SIZE, SIZE), aux=aux, se=se)
    sum(value.pow(2).mean() for value in out.values()).backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


def test_cases_cover_the_zoo() -> None:
    """Fails when a model, backbone family, attention block or option has no case above."""
    assert {name for name, _, _ in CASES} == set(segkit.list_models())
    assert {_family(b) for _, b, _ in CASES} >= {_family(b) for b in segkit.list_backbones()}
    assert {o.get("attention") for _, _, o in CASES} >= set(ATTENTIONS)
    for name in segkit.list_models():
        flags = [k for k, v in head_options(name).items() if isinstance(v, bool)]
        flags += ["aux", *(["jpu"] if name in JPU_MODELS else [])]
        for flag in flags:
            assert any(n == name and o.get(flag) for n, _, o in CASES), (name, flag)


def _bn_pair() -> tuple[PooledBatchNorm2d, nn.BatchNorm2d]:
    """A PooledBatchNorm2d with non-trivial state, and a plain BatchNorm2d with the same."""
    torch.manual_seed(0)
    pooled = PooledBatchNorm2d(8)
    pooled.running_mean.copy_(torch.randn(8))
    pooled.running_var.copy_(torch.rand(8) + 0.5)
    pooled.num_batches_tracked.fill_(5)
    nn.init.uniform_(pooled.weight, 0.5, 1.5)
    nn.init.normal_(pooled.bias)
    plain = nn.BatchNorm2d(8)
    plain.load_state_dict(pooled.state_dict())  # same names and shapes: loads strictly
    return pooled, plain


def test_one_value_per_channel_normalises_with_running_statistics() -> None:
    pooled, plain = _bn_pair()
    before = copy.deepcopy(pooled.state_dict())
    x = torch.randn(1, 8, 1, 1, requires_grad=True)
    out = pooled.train()(x)
    with torch.no_grad():
        expected = plain.eval()(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for key, value in pooled.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    out.pow(2).sum().backward()
    for tensor in (x, pooled.weight, pooled.bias):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    # The planted fault: a plain BatchNorm2d in training mode refuses the same input.
    with pytest.raises(ValueError, match=ONE_VALUE):
        plain.train()(x)


@pytest.mark.parametrize("shape", [(2, 8, 1, 1), (1, 8, 1, 2), (2, 8, 3, 5)])
def test_two_or_more_values_per_channel_is_batchnorm2d(shape: tuple[int, ...]) -> None:
    pooled, plain = _bn_pair()
    x = torch.randn(shape)
    torch.testing.assert_close(pooled.train()(x), plain.train()(x), rtol=0, atol=0)
    after = plain.state_dict()
    for key, value in pooled.state_dict().items():
        torch.testing.assert_close(value, after[key], rtol=0, atol=0, msg=key)
    assert int(after["num_batches_tracked"]) == 6  # the plain BN did update its statistics
    torch.testing.assert_close(pooled.eval()(x), plain.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
def test_aspp_pooling_bn_keeps_its_statistics_at_batch_one(name: str) -> None:
    model = _build(name, "timm:resnet18").train()
    pooled = _pooled_bns(model)
    assert list(pooled) == [
        "classifier.0.convs.4.2" if name == "deeplabv3" else "classifier.aspp.convs.4.2"
    ]
    (bn,) = pooled.values()
    other = next(m for m in model.classifier.modules() if type(m) is nn.BatchNorm2d)
    stats = [t.clone() for t in (bn.running_mean, bn.running_var, other.running_mean)]
    model(torch.randn(1, 3, SIZE, SIZE))
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert not torch.equal(other.running_mean, stats[2])  # the other BNs did learn
    model(torch.randn(2, 3, SIZE, SIZE))
    assert not torch.equal(bn.running_mean, stats[0])  # at batch 2 the pooled BN learns too


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
def test_planted_plain_batchnorm_fails_at_batch_one(name: str) -> None:
    model = _with_plain_batchnorm(_build(name, "timm:resnet18")).train()
    assert not _pooled_bns(model)
    model(torch.randn(2, 3, SIZE, SIZE))  # fine with two images
    with pytest.raises(ValueError, match=ONE_VALUE):
        model(torch.randn(1, 3, SIZE, SIZE))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        model = _build("deeplabv3plus", "timm:resnet18", aux=True).train()
        initial = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        ddp = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(100 + rank)  # each rank its own image
        x = torch.randn(1, 3, SIZE, SIZE)
        target = torch.randint(NUM_CLASSES, (1, SIZE, SIZE))
        out = ddp(x)
        loss = sum(nn.functional.cross_entropy(v, target) for v in out.values())
        loss.backward()
        optimizer.step()
        params = nn.utils.parameters_to_vector(model.parameters()).detach()
        torch.save({"initial": initial, "params": params}, Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_with_one_image_per_rank(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.isfinite(rank0["params"]).all()
    assert not torch.equal(rank0["params"], rank0["initial"])  # the step did move them
    torch.testing.assert_close(rank1["params"], rank0["params"], rtol=0, atol=0)
