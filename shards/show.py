"""``sio shards show``: a grid of sample images per class of a shard set, as one PNG, each row
led by its class name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from sio.core.config import short_text
from sio.core.files import atomic_path
from sio.shardset import iter_samples, read_manifest


def sample_grid(
    shard_set: str | Path, per_class: int = 8, scale: int = 0, order=None
) -> np.ndarray:
    """The first ``per_class`` images of each class (one row per class, in class order or the
    class indices ``order``; a class with fewer leaves its row's rest black), 1-pixel gaps, each
    image enlarged ``scale`` times (0: to about 64 pixels). uint8 H×W (grey sets) or H×W×3."""
    manifest = read_manifest(shard_set)
    height, width = manifest.image_size
    scale = scale or max(1, 64 // max(height, width))
    rows: list[list[np.ndarray]] = [[] for _ in manifest.class_names]
    for image, label, _ in iter_samples(shard_set):
        if len(rows[label]) < per_class:
            rows[label].append(image)
        if all(len(r) == per_class for r in rows):
            break
    rows = [rows[k] for k in order] if order is not None else rows
    cell_h, cell_w = height * scale + 1, width * scale + 1
    grid = np.zeros((manifest.channels, len(rows) * cell_h + 1, per_class * cell_w + 1), np.uint8)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            big = image.repeat(scale, axis=1).repeat(scale, axis=2)
            top, left = 1 + r * cell_h, 1 + c * cell_w
            grid[:, top : top + height * scale, left : left + width * scale] = big
    return grid[0] if manifest.channels == 1 else grid.transpose(1, 2, 0)


def write_grid(
    shard_set: str | Path, out: str | Path, per_class: int = 8, scale: int = 0, labels: bool = True
) -> Path:
    """``sample_grid`` saved as a PNG (grey sets as grey, mode L), each row led by its class
    name in a margin on the left (``labels``; the grid's pixels are the same either way). A
    synthetic set with a per-class audit (``<set>/quality/audit.json``, ``sio generate
    --classifier``) shows its worst class first, each name with its label agreement."""
    out = Path(out)
    order, names = audit_order(shard_set)
    image = Image.fromarray(sample_grid(shard_set, per_class, scale, order))
    if labels:
        image = with_row_names(image, names)
    with atomic_path(out) as partial:
        image.save(partial, format="PNG")
    return out


FONT_SIZE = 12
AUDIT_FILE = "quality/audit.json"  # generate/quality.py writes it, with the shards it judged


def audit_order(shard_set: str | Path) -> tuple[list[int], list[str]]:
    """(class indices, row names): the worst label agreement first with the agreement in each
    name when the set's audit is of its current shards, else class order and the names."""
    manifest = read_manifest(shard_set)
    names = [str(name) for name in manifest.class_names]
    labels = [short_text(name) for name in names]  # a row label of bounded width
    path = Path(shard_set) / AUDIT_FILE
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        record = {}
    agreement = record.get("label_agreement_per_class") if isinstance(record, dict) else None
    if not isinstance(agreement, dict) or record.get("shards_sha256") != manifest.content_sha256:
        return list(range(len(names))), labels
    known = {
        k: float(v)
        for k, v in agreement.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1  # no NaN
    }
    order = sorted(range(len(names)), key=lambda k: known.get(names[k], 2.0))
    shown = [
        f"{labels[k]} {100 * known[names[k]]:.0f}%" if names[k] in known else labels[k]
        for k in order
    ]
    return order, shown


def with_row_names(grid: Image.Image, names) -> Image.Image:
    """``grid`` (one row of cells per class, 1-pixel gaps) after a margin that holds each
    row's class name, white on black, centred on the row."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(FONT_SIZE)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    margin = 8 + max(int(probe.textlength(str(name), font=font)) for name in names)
    canvas = Image.new(grid.mode, (grid.width + margin, grid.height), 0)
    canvas.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    white = 255 if grid.mode == "L" else (255, 255, 255)
    row = (grid.height - 1) / len(names)
    for index, name in enumerate(names):
        centre = 1 + index * row + (row - 1) / 2
        draw.text((4, centre), str(name), fill=white, font=font, anchor="lm")
    return canvas
