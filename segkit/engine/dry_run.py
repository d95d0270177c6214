"""``segkit train --dry-run``: check a configuration end to end without training.

The configuration is resolved as the run would resolve it, the datasets and the model are
built, the first training batch is loaded and the model runs on it; nothing is written: no run
folder is created or locked. Label files are not checked one by one (the run does that first,
and ``segkit doctor`` on its own), so a bad file further in the split shows only then.
"""

from __future__ import annotations

import torch

from segkit.config import Config
from segkit.engine import run_folder
from segkit.engine.build import build_model, class_weights_for, resolve_config
from segkit.engine.data import make_loader
from segkit.engine.device import resolve_device
from segkit.engine.recipe import recipe_and_datasets
from segkit.engine.summary import describe_run

SHOWN_IMAGES = 2  # the forward pass runs on this many images of the batch: shapes, not speed


def dry_run(config: Config) -> list[str]:
    """Resolve ``config``, build its datasets and model, load the first batch and run the model
    on it; returns the report, one line per item (nothing is printed or written).

    The report has the run's summary (model and parameter counts, split sizes, recipe and how
    it was chosen, device),
    the folder the run would write, the first batch's image and mask shapes and dtypes, and the
    shapes of the model's outputs (evaluation mode, on the CPU, for the batch's first images).

    Raises:
        ValueError, OSError, SampleError: what the run would raise for this configuration.
    """
    device = resolve_device(config.train.device)  # the device the run would use
    recipe, train_set, val_set = recipe_and_datasets(config)
    config = recipe.config
    work_dir = run_folder.work_dir_for(config)
    resolved = resolve_config(
        config,
        work_dir=work_dir,
        train_size=len(train_set),
        class_weights=class_weights_for(config, train_set),
    )
    torch.manual_seed(resolved.train.seed)  # the run's initial weights
    model = build_model(resolved, train_set.num_classes)
    lines = describe_run(resolved, model, (train_set, val_set), device, recipe=recipe)
    exists = " (exists: the run needs --resume or --overwrite)" if work_dir.exists() else ""
    lines.append(f"work dir: {work_dir}{exists}; a dry run creates nothing")
    loader = make_loader(
        train_set, batch_size=resolved.train.batch_size, workers=0, seed=resolved.train.seed,
        train=True,
    )  # fmt: skip
    images, masks = next(iter(loader))
    values = torch.unique(masks).tolist()
    listed = ", ".join(map(str, values[:20])) + (", ..." if len(values) > 20 else "")
    lines.append(
        f"first batch: images {_describe(images)}, masks {_describe(masks)} (values {listed})"
    )
    shown = images[:SHOWN_IMAGES]
    model.eval()
    with torch.no_grad():
        outputs = model(shown)
    described = ", ".join(f"{name} {_describe(value)}" for name, value in outputs.items())
    lines.append(f"model outputs for {len(shown)} image(s) (eval mode): {described}")
    return lines


def _describe(tensor: torch.Tensor) -> str:
    """``(4, 3, 40, 40) float32``."""
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
