"""segkit's defaults against two hand-written training loops, on real photographs, from scratch.

The data: a small labelled set built from the photographs that scikit-image, scikit-learn and
matplotlib ship inside their packages (nothing is downloaded). Each image is a crop of a real
photograph (astronaut, China, Grace Hopper, a rocket, a motorcycle, the Hubble deep field, a
camera man) with one to three regions cut in the shape of a polygon, an ellipse or a horse's
silhouette and filled with a material photographed elsewhere: cat fur, coffee, a flower,
stained tissue, a retina, brick, grass, gravel. The label of a pixel is its material (0: the
background photograph). Training images are cut from the left 60% of every photograph,
validation images from the right 40%, so validation pixels are never seen in training. Images
vary in size (160-280 x 120-220 px) and are written in the Pascal VOC layout (JPEG images,
palette PNG masks with a 255 void border three pixels wide around every region, split lists),
under a cache folder, once.

The contenders train DeepLabV3+ with the named backbone from random weights, on the same data,
crop, batch and number of iterations. The two libraries' DeepLabV3+ are not the same network:
smp's reads MobileNetV2's 1280-channel last layer and uses separable 3x3 convolutions in ASPP
and decoder (one in the decoder); segkit's default reads the 320-channel features, as VainF's
model does, with plain 3x3 convolutions and two of them in the decoder, as in the paper's
table and pytorch-deeplab-xception (``--separable --decoder-convs 1`` gives segkit's lighter
form). The GFLOPs column says what each costs:

* ``segkit``: ``segkit train --dataset voc`` given only model, data, crop, batch and
  iterations (its defaults decide the rest), scored on its final weights;
* ``smp-sgd``: ``segmentation_models_pytorch.DeepLabV3Plus`` in a plain loop with the popular
  repositories' recipe: SGD lr 0.01, momentum 0.9, weight decay 1e-4, poly 0.9;
* ``smp-adamw``: the same loop with AdamW lr 2e-3 (weight decay 0.01) and poly 0.9.

The plain loops draw the popular repositories' augmentation (random scale 0.5-2.0, random
crop padded with the ignore label, horizontal flip) from segkit's data pipeline. All three are
scored by this script with one function: whole-image inference on the validation split, IoU of
each of the nine classes, their mean; and each model's forward GFLOPs on one crop-sized image
(segkit's ``forward_gflops``, the one ``segkit models`` prints).

    pip install -e .[bench]
    .venv/bin/python benchmarks/real_photos.py --backbone mobilenet_v2 --iters 600
    .venv/bin/python benchmarks/real_photos.py --only segkit -- --lr 0.004   # segkit flags
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

VERSION = 1  # bump when the set changes: it is rebuilt under a new folder
CLASSES = ["background", "fur", "coffee", "flower", "tissue", "retina", "brick", "grass", "gravel"]
MATERIALS = {  # class -> (package, file inside its data folder)
    "fur": ("skimage", "chelsea.png"),
    "coffee": ("skimage", "coffee.png"),
    "flower": ("sklearn", "flower.jpg"),
    "tissue": ("skimage", "ihc.png"),
    "retina": ("skimage", "retina.jpg"),
    "brick": ("skimage", "brick.png"),
    "grass": ("skimage", "grass.png"),
    "gravel": ("skimage", "gravel.png"),
}
BACKGROUNDS = [
    ("skimage", "astronaut.png"),
    ("sklearn", "china.jpg"),
    ("matplotlib", "grace_hopper.jpg"),
    ("skimage", "rocket.jpg"),
    ("skimage", "motorcycle_left.png"),
    ("skimage", "hubble_deep_field.jpg"),
    ("skimage", "camera.png"),
]
SHAPE_SOURCE = ("skimage", "horse.png")
DATA_FOLDERS = {
    "skimage": "data",
    "sklearn": "datasets/images",
    "matplotlib": "mpl-data/sample_data",
}
TRAIN_SHARE = 0.6  # left share of each photograph for training images, the rest for validation
VOID_WIDTH = 3


def shipped_photo(package: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(
            f"the photographs come from {package}: pip install scikit-image scikit-learn "
            "matplotlib (or pip install -e .[bench])"
        )
    path = Path(spec.origin).parent / DATA_FOLDERS[package] / name
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the installed {package}")
    return path


def _photo(package: str, name: str, split: str) -> np.ndarray:
    """The split's part of a photograph as RGB uint8 (left share: train, rest: val)."""
    image = np.asarray(Image.open(shipped_photo(package, name)).convert("RGB"))
    if name == "retina.jpg":  # the fundus photograph sits in a black frame
        image = image[250:1160, 250:1160]
    cut = int(image.shape[1] * TRAIN_SHARE)
    return image[:, :cut] if split == "train" else image[:, cut:]


def _random_crop(source: np.ndarray, width: int, height: int, rng: np.random.Generator):
    """A ``width`` x ``height`` view of ``source`` at a random scale, position and flip."""
    scale = rng.uniform(0.6, 1.2)
    sw = min(source.shape[1], max(8, int(width / scale)))
    sh = min(source.shape[0], max(8, int(height / scale)))
    x = rng.integers(0, source.shape[1] - sw + 1)
    y = rng.integers(0, source.shape[0] - sh + 1)
    patch = Image.fromarray(source[y : y + sh, x : x + sw]).resize((width, height), Image.BILINEAR)
    array = np.asarray(patch)
    return array[:, ::-1] if rng.random() < 0.5 else array


def _shape_mask(width: int, height: int, horse: np.ndarray, rng: np.random.Generator):
    """A region: a star-shaped polygon, an ellipse or a horse's silhouette, at a random place."""
    radius = rng.uniform(0.18, 0.4) * min(width, height)
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
    kind = rng.choice(["polygon", "ellipse", "horse"], p=[0.5, 0.3, 0.2])
    if kind == "horse":
        side = int(2 * radius)
        shape = Image.fromarray(horse).resize((side, side), Image.NEAREST)
        if rng.random() < 0.5:
            shape = shape.transpose(Image.FLIP_LEFT_RIGHT)
        canvas = Image.new("L", (width, height), 0)
        canvas.paste(shape, (int(cx - radius), int(cy - radius)))
        return np.asarray(canvas) > 0
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "ellipse":
        rx, ry = radius * rng.uniform(0.5, 1.0), radius * rng.uniform(0.5, 1.0)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    else:
        count = rng.integers(5, 11)
        angles = np.sort(rng.uniform(0, 2 * math.pi, count))
        radii = radius * rng.uniform(0.5, 1.0, count)
        points = [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)
        ]
        draw.polygon(points, fill=1)
    return np.asarray(canvas) > 0


def _scene(split: str, sources: dict, rng: np.random.Generator):
    width, height = int(rng.integers(160, 281)), int(rng.integers(120, 221))
    background = sources["backgrounds"][rng.integers(len(sources["backgrounds"]))]
    image = _random_crop(background, width, height, rng).copy()
    label = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 4)):
        region = _shape_mask(width, height, sources["horse"], rng)
        if region.sum() < 200:
            continue
        cls = int(rng.integers(1, len(CLASSES)))
        texture = _random_crop(sources["materials"][CLASSES[cls]], width, height, rng)
        image[region] = texture[region]
        label[region] = cls
    pil = Image.fromarray(label)
    size = 2 * VOID_WIDTH - 1
    edge = np.asarray(pil.filter(ImageFilter.MaxFilter(size))) != np.asarray(
        pil.filter(ImageFilter.MinFilter(size))
    )
    label[edge] = 255
    return image, label


def build_set(cache: Path, *, train: int = 400, val: int = 100, seed: int = 0) -> Path:
    """Write the set under ``cache`` once (VOC layout); return the folder holding VOCdevkit."""
    root = cache / f"real_photos_v{VERSION}_{train}_{val}_{seed}"
    voc = root / "VOCdevkit" / "VOC2012"
    done = voc / "ImageSets" / "Segmentation" / "val.txt"
    if done.is_file():
        return root
    palette = [0] * 768
    from segkit.datasets.palettes import voc_palette

    for index, color in enumerate(voc_palette(256)):
        palette[3 * index : 3 * index + 3] = color
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    horse = np.asarray(Image.open(shipped_photo(*SHAPE_SOURCE)).convert("RGBA"))
    horse_mask = ((horse[..., 3] > 0) & (horse[..., :3].mean(-1) < 128)).astype(np.uint8) * 255
    for split, count in (("train", train), ("val", val)):
        sources = {
            "materials": {c: _photo(p, n, split) for c, (p, n) in MATERIALS.items()},
            "backgrounds": [_photo(p, n, split) for p, n in BACKGROUNDS],
            "horse": horse_mask,
        }
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        names = []
        for index in range(count):
            image, label = _scene(split, sources, rng)
            name = f"{split}_{index:04d}"
            Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=90)
            mask = Image.fromarray(label, mode="P")
            mask.putpalette(palette)
            mask.save(voc / "SegmentationClass" / f"{name}.png")
            names.append(name)
        lists = voc / "ImageSets" / "Segmentation"
        (lists / f"{split}.txt.tmp").write_text("".join(n + "\n" for n in names))
        os.replace(lists / f"{split}.txt.tmp", lists / f"{split}.txt")
    (root / "classes.txt").write_text("".join(c + "\n" for c in CLASSES))
    return root


def _datasets(root: Path, crop: int):
    """Training split with the popular repositories' augmentation, and the validation split."""
    from segkit.config import Config
    from segkit.engine.data import build_datasets

    config = Config()
    config.data.dataset, config.data.root, config.data.crop_size = "voc", str(root), crop
    config.data.scale_range, config.data.color_jitter, config.data.hflip = [0.5, 2.0], None, 0.5
    return build_datasets(config)


def score(model: torch.nn.Module, val_set) -> tuple[float, list[float]]:
    """mIoU over the set's nine classes, whole-image inference, on the validation split."""
    model.eval()
    classes = len(CLASSES)
    confusion = torch.zeros(classes, classes, dtype=torch.int64)
    with torch.inference_mode():
        for index in range(len(val_set)):
            image, mask = val_set[index]
            logits = model(image[None])
            if isinstance(logits, dict):
                logits = logits["out"]
            pred = logits[0, :classes].argmax(0)  # a model with more outputs: the set's classes
            keep = mask != 255
            confusion += torch.bincount(
                mask[keep].long() * classes + pred[keep], minlength=classes * classes
            ).reshape(classes, classes)
    tp = confusion.diag().double()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    iou = (tp / union.double().clamp(min=1)).tolist()
    return float(np.mean(iou)), iou


def gflops(model: torch.nn.Module, crop: int) -> float:
    """Forward GFLOPs of the scored (eval-mode) ``model`` on one ``crop x crop`` image."""
    from segkit.deploy.bench import forward_gflops

    return forward_gflops(model.eval(), torch.zeros(1, 3, crop, crop))


def _padded_smp(model: torch.nn.Module):
    """smp's DeepLabV3+ needs sides divisible by 16: pad, predict, crop back."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 16, (-w) % 16
        out = model(torch.nn.functional.pad(x, (0, pw, 0, ph)))
        return out[..., :h, :w]

    forward.eval = model.eval
    return forward


def run_peer(root: Path, args: argparse.Namespace, recipe: str) -> dict:
    """smp's DeepLabV3+ in a plain loop with ``recipe`` (sgd | adamw)."""
    import segmentation_models_pytorch as smp
    from torch.utils.data import DataLoader

    torch.manual_seed(args.seed)
    train_set, val_set = _datasets(root, args.crop)
    model = smp.DeepLabV3Plus(args.backbone, encoder_weights=None, classes=21)
    if recipe == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: (1 - min(it, args.iters) / args.iters) ** 0.9
    )
    loader = DataLoader(
        train_set, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=2,
        persistent_workers=True,
    )  # fmt: skip
    start, step = time.perf_counter(), 0
    model.train()
    while step < args.iters:
        for images, masks in loader:
            loss = torch.nn.functional.cross_entropy(model(images), masks.long(), ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step == args.iters:
                break
    seconds = time.perf_counter() - start
    miou, iou = score(_padded_smp(model), val_set)
    return {
        "name": f"smp-{recipe}", "mIoU": miou, "iou": iou, "seconds": seconds,
        "gflops": gflops(model, args.crop),
    }  # fmt: skip


def run_segkit(root: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    """``segkit train`` given only model, data, crop, batch and iterations (plus ``extra``)."""
    import segkit

    work_dir = Path(tempfile.mkdtemp(prefix="segkit-real-photos-"))
    command = [
        sys.executable, "-m", "segkit", "train", "--dataset", "voc", "--data-root", str(root),
        "--model", "deeplabv3plus", "--backbone", args.backbone, "--crop-size", str(args.crop),
        "--batch-size", str(args.batch), "--iters", str(args.iters), "--seed", str(args.seed),
        "--work-dir", str(work_dir), *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=None if args.verbose else subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    _, val_set = _datasets(root, args.crop)
    model = segkit.load_model(work_dir / "checkpoints" / "last.pt")
    miou, iou = score(model, val_set)
    name = "segkit" + (" " + " ".join(extra) if extra else "")
    return {
        "name": name, "mIoU": miou, "iou": iou, "seconds": seconds,
        "gflops": gflops(model, args.crop), "work_dir": str(work_dir),
    }  # fmt: skip


def cpu_name() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v2", choices=["mobilenet_v2", "resnet50"])
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "segkit-bench")
    parser.add_argument("--only", nargs="+", default=["segkit", "smp-sgd", "smp-adamw"])
    parser.add_argument("--json", type=Path, help="append each result to this JSON-lines file")
    parser.add_argument("--verbose", action="store_true", help="show segkit train's output")
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    # SIGTERM (kill, a scheduler's time limit) unwinds like Ctrl-C: subprocess.run then stops
    # the segkit train it waits for instead of leaving it running on its own
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    torch.set_num_threads(args.threads)
    root = build_set(args.cache)
    print(
        f"{root}; {cpu_name()}, {args.threads} threads, torch {torch.__version__}; DeepLabV3+ "
        f"{args.backbone}, {args.iters} iterations of batch {args.batch}, crop {args.crop}",
        flush=True,
    )
    print(f"{'contender':<40} {'mIoU':>6} {'min':>6} {'GFLOPs':>6}  per class", flush=True)
    for name in args.only:
        if name == "segkit":
            result = run_segkit(root, args, extra)
        else:
            result = run_peer(root, args, name.removeprefix("smp-"))
        sizes = {"iters": args.iters, "batch": args.batch, "crop": args.crop, "seed": args.seed}
        result.update(backbone=args.backbone, **sizes)
        per_class = " ".join(f"{v:.2f}" for v in result["iou"])
        print(
            f"{result['name']:<40} {result['mIoU']:6.3f} {result['seconds'] / 60:6.1f} "
            f"{result['gflops']:6.2f}  {per_class}",
            flush=True,
        )
        if args.json:
            with args.json.open("a") as out:
                out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
