"""The embedded default benchmark ``digits``: real data that ships inside installed packages.

ID: scikit-learn's 8x8 digits (17 grey levels) of ``id_classes``, split per class into
train/val/test. Near-OOD: the digits of ``near_ood_classes``. Far-OOD: random square crops of
scikit-image's textures, photos and printed text (and scikit-learn's two sample photos), turned
grey, box-filtered down to 8x8 and quantised to the same 17 grey levels as the digits. Everything
is a deterministic function of the config and its seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sio.core.seeding import numpy_rng
from sio.shards.config import DigitsConfig

IMAGE_SIZE = 8
FAR_OOD_SOURCES = {
    "textures": ("brick", "grass", "gravel"),
    "photos": ("astronaut", "coffee", "chelsea", "rocket", "camera", "china", "flower"),
    "text": ("text", "page"),
}


def quantise_17(grey: np.ndarray) -> np.ndarray:
    """Map 0..255 grey to the digits' 17 levels (0..16), stored as round(v * 255 / 16)."""
    levels = np.rint(grey.astype(np.float64) * 16 / 255)
    return np.rint(levels * 255 / 16).astype(np.uint8)


def load_source_image(name: str) -> np.ndarray:
    """A grey uint8 image from scikit-image's or scikit-learn's bundled files."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        rgb = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        rgb = getattr(skimage.data, name)()
    return np.asarray(Image.fromarray(rgb).convert("L"))


def render_crops(
    sources: tuple[str, ...],
    count: int,
    rng: np.random.Generator,
    size: int = IMAGE_SIZE,
    quantise: bool = True,
):
    """``count`` grey crops (uint8 ``size`` x ``size``, box-filtered down from a random square
    at least twice as large; quantised to the digits' 17 levels unless ``quantise`` is False),
    their source index, and (y, x, side) of each crop in its source image."""
    images = [load_source_image(name) for name in sources]
    crops, labels, boxes = [], [], []
    for _ in range(count):
        label = int(rng.integers(len(images)))
        image = images[label]
        side = int(rng.integers(size * 2, min(image.shape) // 2 + 1))
        y = int(rng.integers(image.shape[0] - side + 1))
        x = int(rng.integers(image.shape[1] - side + 1))
        patch = Image.fromarray(image[y : y + side, x : x + side])
        small = np.asarray(patch.resize((size, size), Image.Resampling.BOX))
        crops.append(quantise_17(small) if quantise else small)
        labels.append(label)
        boxes.append((y, x, side))
    return np.stack(crops), np.array(labels), boxes


def split_id(labels: np.ndarray, config: DigitsConfig, rng: np.random.Generator):
    """Per-class train/val/test index arrays (sorted), deterministic given ``rng``."""
    parts = {"train": [], "val": [], "test": []}
    for cls in config.id_classes:
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(len(members) * config.val_fraction)
        n_test = round(len(members) * config.test_fraction)
        parts["val"].append(members[:n_val])
        parts["test"].append(members[n_val : n_val + n_test])
        parts["train"].append(members[n_val + n_test :])
    return {name: np.sort(np.concatenate(idx)) for name, idx in parts.items()}


def build_digits(config: DigitsConfig, seed: int):
    """The splits as tuples (folder, role, name, images, labels, class_names, metas)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)
    targets = digits.target.astype(np.int64)
    id_map = {c: i for i, c in enumerate(config.id_classes)}
    id_names = tuple(str(c) for c in config.id_classes)
    splits = []
    for part, indices in split_id(targets, config, numpy_rng(seed, "digits", "split")).items():
        labels = np.array([id_map[int(t)] for t in targets[indices]])
        metas = [{"dataset": "sklearn.digits", "index": int(i)} for i in indices]
        splits.append((f"id_{part}", "id", part, pixels[indices], labels, id_names, metas))
    near = np.flatnonzero(np.isin(targets, config.near_ood_classes))
    near_map = {c: i for i, c in enumerate(config.near_ood_classes)}
    near_names = tuple(str(c) for c in config.near_ood_classes)
    near_labels = np.array([near_map[int(t)] for t in targets[near]])
    near_metas = [{"dataset": "sklearn.digits", "index": int(i)} for i in near]
    splits.append(
        ("near_digits", "near", "digits", pixels[near], near_labels, near_names, near_metas)
    )
    for name, sources in FAR_OOD_SOURCES.items():
        rng = numpy_rng(seed, "digits", "far", name)
        crops, labels, boxes = render_crops(sources, config.far_ood_images_per_set, rng)
        metas = [
            {"dataset": f"image.{sources[lab]}", "crop_yx_size": list(box)}
            for lab, box in zip(labels, boxes, strict=True)
        ]
        splits.append((f"far_{name}", "far", name, crops, labels, sources, metas))
    return splits
