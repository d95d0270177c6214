"""Test-wide settings and the helpers every test folder shares, as fixtures.

``check_outputs`` asserts the output contract of a segmenter and ``randomize_bn`` gives its
BatchNorm layers non-trivial state; a test asks for them by name (tests have no package, so
fixtures are how code is shared across folders).
"""

import os
from collections.abc import Callable, Mapping

import pytest
import torch
from torch import Tensor, nn

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def pytest_configure(config) -> None:
    # `pytest -n 2` on a 2-core machine: one intra-op thread per worker process, otherwise the
    # workers' thread pools oversubscribe the cores and tiny ops become 100x slower.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch) -> None:
    """Every test gets its own segkit cache folder (label pre-flight results), never ~/.cache."""
    monkeypatch.setenv("SEGKIT_CACHE", str(tmp_path_factory.mktemp("segkit-cache")))


def check_segmenter_outputs(
    outputs: Mapping[str, Tensor],
    shape: tuple[int, int, int, int],
    *,
    aux: bool = False,
    se: bool = False,
) -> None:
    """Assert that ``outputs`` is what a segmenter returns for a batch of ``shape`` logits.

    The keys are exactly ``"out"``, plus ``"aux"`` with ``aux`` and ``"se"`` with ``se`` (a model
    in eval mode returns ``"out"`` only: pass neither). ``"out"`` and ``"aux"`` are
    ``N x C x H x W`` (``shape``), ``"se"`` is ``N x C``; every value is a finite float tensor.
    """
    n, c, h, w = shape
    expected = {"out"} | ({"aux"} if aux else set()) | ({"se"} if se else set())
    assert set(outputs) == expected, f"output keys {sorted(outputs)}, expected {sorted(expected)}"
    for key, value in outputs.items():
        assert isinstance(value, Tensor) and value.is_floating_point(), (key, type(value))
        wanted = (n, c) if key == "se" else (n, c, h, w)
        assert tuple(value.shape) == wanted, f"{key!r}: shape {tuple(value.shape)} != {wanted}"
        assert torch.isfinite(value).all(), f"{key!r} has non-finite values"


def randomize_batchnorm(model: nn.Module, *, seed: int = 0, affine: bool = False) -> nn.Module:
    """Give every BatchNorm layer of ``model`` non-trivial state, reproducibly; returns ``model``.

    Running means ~ N(0, 0.1^2) and running variances ~ U[0.5, 1.5), so that an eval-mode
    comparison really tests the BatchNorm wiring (fresh layers are the identity map). With
    ``affine`` the scales ~ U[0.5, 1.5) and shifts ~ N(0, 0.1^2) too, which also undoes zero
    initialisations (timm's ``zero_init_last``) that block gradients at initialisation only.
    Draws come from a generator seeded with ``seed``, never from the global RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, BATCHNORMS):
                continue
            n = module.num_features
            if module.running_mean is not None and module.running_var is not None:
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            if affine and module.weight is not None and module.bias is not None:
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


@pytest.fixture
def check_outputs() -> Callable[..., None]:
    """:func:`check_segmenter_outputs`: ``check_outputs(outputs, (N, C, H, W), aux=, se=)``."""
    return check_segmenter_outputs


@pytest.fixture
def randomize_bn() -> Callable[..., nn.Module]:
    """:func:`randomize_batchnorm`: ``randomize_bn(model, seed=0, affine=False)``."""
    return randomize_batchnorm
