"""Segment images with a checkpoint (``segkit predict CKPT-FLAGS INPUT... --out DIR``).

Inputs are files, folders (searched recursively) or glob patterns; a file reached twice (by a
folder and a glob, say) is predicted once. Each image's class-index mask is written as a palette
PNG, which opens as colours and reads back (e.g. with PIL) as class indices. Beside it:

- ``--overlay``: ``<name>_overlay.png``, the class colours blended over the image, except on the
  background class, whose pixels keep the image as it is (:mod:`segkit.visualize` says why),
  with a legend of the classes present on the right.
- ``--side-by-side``: ``<name>_side.png``, the image | the colour mask, with the same legend.
- ``--save-probs``: ``<name>_probs.npy``, the class probabilities ``C x H x W`` as float16
  (``numpy.load``; float16 keeps 3 significant digits, plenty for values in 0..1, at half the
  size of float32).

The work is :class:`segkit.Predictor`'s, so ``segkit.Predictor(CKPT)(image)`` in Python gives
the mask this command writes.

Where outputs go: one root is computed for the whole call, the common ancestor of every folder
input, every file input's folder and every glob's fixed leading folder (``photos`` for
``photos/**/*.jpg``). Each image is written at its path relative to that root with ``.png``
for its suffix: ``predict photos/ --out P`` writes ``P/<path inside photos>.png``;
``predict a/x.jpg b/x.jpg`` writes ``P/a/x.png`` and ``P/b/x.png``. Inputs that would still
share an output (``a.jpg`` and ``a.png`` in one folder) keep their suffix in the name, those
inputs only: ``a.jpg.png`` and ``a.png.png`` (overlays ``a.jpg_overlay.png``, ...).

Nothing is lost: an output that would overwrite an input is refused before any work, files
under ``--out`` are not taken as inputs when ``--out`` lies inside a scanned folder, each PNG
is written atomically (a temporary file renamed over the target), and a file that fails for
any reason (unreadable, out of memory, a size a static ONNX file rejects) is reported in one
line while the rest still run. The exit status is 1 if any input was missing or failed.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segkit.cli.common import (
    add_inference_arguments,
    inference_config,
    open_model,
    runtime_model,
)
from segkit.datasets import colorize, read_image
from segkit.datasets.io import IMAGE_SUFFIXES
from segkit.engine.device import resolve_device
from segkit.engine.evaluate import inference_options
from segkit.files import prepare_folder, write_atomically
from segkit.predictor import Predictor
from segkit.visualize import background_class, colour_mask, overlay, side_by_side, with_legend

#: Output kind -> the suffix that replaces ``.png`` in the mask's file name.
EXTRAS = {"overlay": "_overlay.png", "side": "_side.png", "probs": "_probs.npy"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``segkit predict``'s flags."""
    add_inference_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or globs")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("predictions"),
        help="output folder; predictions mirror the inputs' paths below their common folder",
    )
    parser.add_argument(
        "--overlay",
        action="store_true",
        help="also write <name>_overlay.png: the class colours blended over the image (the "
        "background class left as it is) and a legend of the classes present",
    )
    parser.add_argument(
        "--overlay-alpha",
        type=float,
        default=0.5,
        metavar="A",
        help="opacity of the colours in the overlay, 0-1",
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="also write <name>_side.png: the image | the colour mask, with the legend",
    )
    parser.add_argument(
        "--save-probs",
        action="store_true",
        help="also write <name>_probs.npy: the class probabilities C x H x W as float16",
    )


@dataclass
class Inputs:
    """What the INPUT arguments name.

    ``files`` are absolute, each file once in the order found; ``folders`` are the folders the
    outputs are laid out relative to (one per input that gave files); ``missing`` holds one
    ``"INPUT: reason"`` line per input that gave nothing.
    """

    files: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class Job:
    """One image to predict and the files it writes: the mask and the ``extras`` asked for
    (kind in :data:`EXTRAS` -> file)."""

    source: Path
    mask: Path
    extras: dict[str, Path] = field(default_factory=dict)

    @property
    def outputs(self) -> list[Path]:
        return [self.mask, *self.extras.values()]


def _glob_base(pattern: str) -> Path:
    """The leading folders of ``pattern`` before the first part with a wildcard."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(os.path.abspath(Path(*parts) if parts else "."))


def collect_inputs(inputs: list[str], out: Path | None = None) -> Inputs:
    """Expand files, folders (recursively, image suffixes only) and globs into :class:`Inputs`.

    When ``out`` lies inside a scanned folder (or a glob's leading folder), files below it are
    skipped: they are earlier predictions, not inputs. A file named explicitly is always kept.
    """
    result = Inputs()
    seen: set[str] = set()
    out = Path(os.path.abspath(out)) if out is not None else None
    for item in inputs:
        path, scanned = Path(item), True
        if path.is_dir():
            base = Path(os.path.abspath(path))
            found = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            empty = f"{item}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder"
        elif path.is_file():
            found, scanned = [Path(os.path.abspath(path))], False
            base, empty = found[0].parent, ""
        elif glob.has_magic(item):
            base = _glob_base(item)
            found = sorted(Path(os.path.abspath(p)) for p in glob.glob(item, recursive=True))
            empty = f"{item}: no file matches this pattern"
        else:
            result.missing.append(f"{item}: no such file or folder")
            continue
        if scanned and out is not None and out != base and out.is_relative_to(base):
            found = [p for p in found if not p.is_relative_to(out)]
        found = [p for p in found if p.is_file()]
        if not found:
            result.missing.append(empty)
            continue
        result.folders.append(base)
        for file in found:
            key = os.path.realpath(file)
            if key not in seen:
                seen.add(key)
                result.files.append(file)
    return result


def plan_outputs(files: list[Path], root: Path, out: Path, extras: Sequence[str] = ()) -> list[Job]:
    """Output paths of ``files``: ``out / <path relative to root>`` with ``.png``, and those
    of the ``extras`` kinds (:data:`EXTRAS`) beside it.

    Inputs whose outputs (mask or extras) would coincide keep their suffix in the name
    (``a.jpg`` -> ``a.jpg.png``), repeated until every output is distinct.

    Raises:
        ValueError: two inputs still map to one file (only for contrived names).
    """
    keep_suffix: set[int] = set()
    while True:
        jobs = []
        for i, file in enumerate(files):
            rel = file.relative_to(root)
            name = rel.name if i in keep_suffix else rel.stem
            target = out / rel.parent / name
            paths = {kind: target.with_name(name + EXTRAS[kind]) for kind in extras}
            jobs.append(Job(file, target.with_name(f"{name}.png"), paths))
        owners: dict[Path, list[int]] = {}
        for i, job in enumerate(jobs):
            for path in job.outputs:
                owners.setdefault(path, []).append(i)
        clashes = {path: ids for path, ids in owners.items() if len(ids) > 1}
        clashing = {i for ids in clashes.values() for i in ids}
        if not clashing:
            return jobs
        if clashing <= keep_suffix:
            path, (a, b, *_) = next(iter(clashes.items()))
            raise ValueError(
                f"{files[a]} and {files[b]} would both be written to {path}; predict them in "
                "separate calls with different --out folders"
            )
        keep_suffix |= clashing


def check_outputs(jobs: list[Job], out: Path) -> None:
    """Refuse, before any work, an output that would overwrite one of the inputs."""
    sources = {os.path.realpath(job.source): job.source for job in jobs}
    for job in jobs:
        for path in job.outputs:
            source = sources.get(os.path.realpath(path))
            if source is not None:
                raise ValueError(
                    f"--out {out} would overwrite the input image {source}; give another --out "
                    "folder, outside the input folders"
                )


def prepare_out(out: Path) -> None:
    """Create ``out`` and check that a file can be written in it."""
    prepare_folder(out, "--out")


def save_png(image: Image.Image | np.ndarray, path: Path) -> None:
    """Write ``image`` (PIL, or ``H x W x 3`` uint8) as PNG atomically: a kill or an error
    leaves the old file or the new one at ``path``, never a partial file."""
    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    write_atomically(path, lambda handle: picture.save(handle, format="PNG"))


def reason(err: Exception, limit: int = 300) -> str:
    """``err`` on one line (its lines joined: ONNX Runtime puts the sizes it expected on the
    second), the exception type too when it is not a user-input error."""
    from segkit.cli import one_line

    text = " ".join(line.strip() for line in one_line(err).splitlines() if line.strip())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    if isinstance(err, (ValueError, OSError)) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run(args: argparse.Namespace) -> int:
    """Predict every input; exit status 1 if any input was missing or failed."""
    from tqdm import tqdm

    out = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a folder; {out} is a file")
    inputs = collect_inputs(args.inputs, out)
    root = Path(os.path.commonpath(inputs.folders)) if inputs.folders else Path.cwd()
    asked = {"overlay": args.overlay, "side": args.side_by_side, "probs": args.save_probs}
    jobs = plan_outputs(inputs.files, root, out, [kind for kind, on in asked.items() if on])
    check_outputs(jobs, out)

    if not 0 <= args.overlay_alpha <= 1:
        raise ValueError(f"--overlay-alpha must be between 0 and 1, got {args.overlay_alpha}")
    device = resolve_device(args.device)
    checkpoint, model = open_model(args, device)
    config = inference_config(args, checkpoint)
    # The runtime (torch fast path or --onnx file, checked against the checkpoint) and the
    # protocol come from the shared flags; the predictor does the rest.
    protocol = inference_options(config.eval)
    predictor = Predictor(
        runtime_model(args, model),
        device=device,
        meta=model.meta,
        mode=protocol["mode"],
        window=protocol["window"],
        stride=protocol["stride"],
        scales=protocol["scales"],
        flip=protocol["flip"],
    )
    prepare_out(out)

    failures = list(inputs.missing)
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    print(f"predicting {len(jobs)} image(s) below {root} into {out} (same relative paths, .png)")
    written = 0
    try:
        for job in tqdm(jobs, desc="predict", unit="img"):
            try:
                image = read_image(job.source)
                if "probs" in job.extras:
                    result = predictor.predict(image)
                    mask, probs = result.mask, result.probs
                else:
                    mask, probs = predictor(image), None
                write_outputs(job, image, mask, probs, predictor, args.overlay_alpha)
            except Exception as err:  # any failure: one bad file must not stop the others
                failed = f"{job.source}: {reason(err)}"
            else:
                written += 1
                continue
            # Out here the traceback and the tensors its frames held are gone, so emptying the
            # cache returns a failed (e.g. out-of-memory) image's memory for the next one.
            if device.type == "cuda":
                torch.cuda.empty_cache()
            failures.append(failed)
            tqdm.write(f"error: {failed}", file=sys.stderr)
    finally:
        failed_note = f"; {len(failures)} input(s) failed" if failures else ""
        print(f"wrote {written} prediction(s) to {out}{failed_note}")
    return 1 if failures else 0


def write_outputs(
    job: Job,
    image: np.ndarray,
    mask: np.ndarray,
    probs: np.ndarray | None,
    predictor: Predictor,
    alpha: float,
) -> None:
    """Save the palette mask (``H x W``) and the job's extras: the overlay (``alpha``) and the
    side-by-side picture of ``image`` (``H x W x 3`` uint8) with their legend, and ``probs``
    (``C x H x W``) as float16 ``.npy``."""
    names, palette = predictor.class_names, predictor.palette
    save_png(colorize(mask, palette), job.mask)
    if "overlay" in job.extras:
        blended = overlay(image, mask, palette, alpha=alpha, keep=background_class(names))
        save_png(with_legend(blended, mask, names, palette), job.extras["overlay"])
    if "side" in job.extras:
        pair = side_by_side(image, colour_mask(mask, palette))
        save_png(with_legend(pair, mask, names, palette), job.extras["side"])
    if "probs" in job.extras and probs is not None:
        half = probs.astype(np.float16)
        write_atomically(job.extras["probs"], lambda handle: np.save(handle, half))
