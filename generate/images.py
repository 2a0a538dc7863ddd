"""What an image of a generation job is: its seed, its label, and the batches it comes in.

Every image is a function of (generator weights, sampler settings, seed, its index q, its
label) alone: a conditional generator samples image q of class ``q mod K`` from the per-image
seed ``derive_seed(seed, "image", q)`` (see base.py for why the network runs in calls of a fixed
``network_batch``). An unconditional one is pseudo-labelled per block of ``labels.block``
images: block b's candidates are sampled from the seeds ``derive_seed(seed, "candidate", b, j)``,
j = 0, 1, ..., labelled by the classifier, and image q (slot s of its block) is, with a quota,
the ``s div K``-th candidate of its class ``q mod K``, without one the s-th candidate kept. With
``labels.filter: agree`` a conditional generator's image q is the first of its own candidates
j = 0, 1, ... (seed ``filtered_seed(seed, q, j)``; candidate 0 is the unfiltered image q) that
the classifier labels as class ``q mod K`` with confidence >= ``labels.min_confidence``. So
the same images come out whatever the batch size, shard size or rank count, a shard (or any
slice) can be regenerated alone, and ``sio serve`` gives the bytes ``sio generate`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sio.core.seeding import derive_seed
from sio.generate.job import GenerationError, Job
from sio.generate.labels import balanced_labels

MAX_CANDIDATES_PER_IMAGE = 50  # pseudo-labels and the agree filter give up after 50 per image


def image_seed(seed: int, index: int) -> int:
    return derive_seed(seed, "image", index)


def candidate_seed(seed: int, block: int, candidate: int) -> int:
    return derive_seed(seed, "candidate", block, candidate)


def filtered_seed(seed: int, index: int, candidate: int) -> int:
    """Candidate ``candidate`` of image ``index`` under ``labels.filter: agree``; the first is
    the image's unfiltered seed."""
    if candidate == 0:
        return image_seed(seed, index)
    return derive_seed(seed, "image", index, candidate)


@dataclass
class Batch:
    """Consecutive images of a shard, with their labels and provenance; ``agree``: how many the
    classifier labels as their class; under a filter, ``drawn``: the candidates sampled per class
    (``agree`` then counts the candidates kept)."""

    images: torch.Tensor
    labels: torch.Tensor
    metas: list[dict]
    agree: int = 0
    drawn: torch.Tensor | None = None


def _sample_calls(job: Job, labels: torch.Tensor, seeds: list[int], step=None) -> torch.Tensor:
    """``sample_seeds`` one network call at a time (the calls ``fixed_calls`` makes, so the
    same bytes), calling ``step(rows)`` after each: a bar moves per network batch."""
    size = job.config.network_batch
    parts = []
    for start in range(0, len(seeds), size):
        parts.append(
            job.generator.sample_seeds(labels[start : start + size], seeds[start : start + size])
        )
        if step is not None:
            step(len(parts[-1]))
    return torch.cat(parts)


def conditional_batches(job: Job, samples: range, step=None):
    """The images of ``samples`` in batches of ``batch_size``; ``step(rows)`` per network call."""
    size, num_classes = job.config.batch_size, job.generator.num_classes
    for start in range(samples.start, samples.stop, size):
        indices = range(start, min(start + size, samples.stop))
        labels = balanced_labels(indices.start, len(indices), num_classes)
        seeds = [image_seed(job.config.seed, q) for q in indices]
        images = _sample_calls(job, labels, seeds, step)
        metas = [{"seed": s, "index": q} for s, q in zip(seeds, indices, strict=True)]
        agree = 0
        if job.classifier is not None:
            probs = job.classify(images)
            for k, meta in enumerate(metas):
                meta["classifier_prob"] = round(float(probs[k, labels[k]]), 6)
            agree = int((probs.argmax(1) == labels).sum())
        yield Batch(images, labels, metas, agree)


def filtered_batches(job: Job, samples: range, step=None):
    """The images of ``samples`` the classifier agrees with, in batches of ``batch_size`` (see
    the module docstring); ``step(rows)`` as images are kept."""
    size, num_classes = job.config.batch_size, job.generator.num_classes
    for start in range(samples.start, samples.stop, size):
        indices = range(start, min(start + size, samples.stop))
        labels = balanced_labels(indices.start, len(indices), num_classes)
        kept, drawn = _first_agreeing(job, indices, labels, step)
        images = torch.stack([image for image, _ in kept])
        yield Batch(images, labels, [meta for _, meta in kept], len(kept), drawn)


def _first_agreeing(job: Job, indices: range, labels: torch.Tensor, step=None):
    """([(image, meta)] of ``indices``, candidates drawn per class): every image's candidates
    drawn in rounds, all images still open sampled together, until each is kept or
    ``MAX_CANDIDATES_PER_IMAGE`` were refused (a GenerationError naming the image's class)."""
    seed, threshold = job.config.seed, job.labels.min_confidence
    kept: list = [None] * len(indices)
    drawn = torch.zeros(job.generator.num_classes, dtype=torch.int64)
    open_rows, candidate = list(range(len(indices))), 0
    while open_rows:
        if candidate == MAX_CANDIDATES_PER_IMAGE:
            first = open_rows[0]
            raise GenerationError(_none_agreed(job, indices[first], int(labels[first])))
        wanted = labels[open_rows]
        seeds = [filtered_seed(seed, indices[row], candidate) for row in open_rows]
        images = _sample_calls(job, wanted, seeds)
        probs = job.classify(images)
        own = probs.gather(1, wanted[:, None])[:, 0]
        agrees = ((probs.argmax(1) == wanted) & (own >= threshold)).tolist()
        drawn += torch.bincount(wanted, minlength=len(drawn))
        for r, row in enumerate(open_rows):
            if agrees[r]:
                meta = {"seed": seeds[r], "index": indices[row], "candidate": candidate}
                kept[row] = (images[r], {**meta, "classifier_prob": round(float(own[r]), 6)})
        open_rows = [row for r, row in enumerate(open_rows) if not agrees[r]]
        if step is not None:
            step(len(agrees) - len(open_rows))
        candidate += 1
    return kept, drawn


def _none_agreed(job: Job, index: int, label: int) -> str:
    name = job.class_names[label]
    needs = f" with confidence >= {job.labels.min_confidence}" if job.labels.min_confidence else ""
    return (
        f"image {index} (class '{name}'): the classifier labelled none of its "
        f"{MAX_CANDIDATES_PER_IMAGE} candidates '{name}'{needs}; the generator rarely makes "
        "this class: train it longer, lower labels.min_confidence, or set labels.filter: none"
    )


def pseudo_batches(job: Job, samples: range, step=None):
    """The pseudo-labelled images of ``samples``, block by block (see the module docstring);
    ``step(rows)`` per batch kept."""
    block = job.labels.block
    start = samples.start
    while start < samples.stop:
        b = start // block
        end = min(samples.stop, (b + 1) * block)
        picked = _pick_candidates(job, b, range(start - b * block, end - b * block))
        for first in range(0, len(picked), job.config.batch_size):
            part = picked[first : first + job.config.batch_size]
            if step is not None:
                step(len(part))
            yield Batch(
                torch.stack([image for image, _, _ in part]),
                torch.tensor([meta["label"] for _, meta, _ in part]),
                [meta["meta"] for _, meta, _ in part],
            )
        start = end


def _pick_candidates(job: Job, block: int, slots: range) -> list:
    """(image, {"label", "meta"}, slot) for each slot of ``slots`` in block ``block``."""
    classes = len(job.class_names)
    base = block * job.labels.block
    quota = job.labels.quota
    # with a quota, slot s (image q = base + s) is the (s div K)-th candidate of class q mod K
    wanted = {}
    for s in slots:
        key = ((base + s) % classes, s // classes) if quota else s
        wanted[key] = s
    found, counts, kept = {}, [0] * classes, 0
    limit = MAX_CANDIDATES_PER_IMAGE * max(1, slots.stop)
    j = 0
    while len(found) < len(wanted):
        if j >= limit:
            left = [key for key, s in wanted.items() if s not in found]
            images = range(base + slots.start, base + slots.stop)
            raise GenerationError(_give_up(job, images, left, j))
        batch = range(j, j + job.config.batch_size)
        seeds = [candidate_seed(job.config.seed, block, c) for c in batch]
        images = job.generator.sample_seeds(None, seeds)
        confidence, labels = job.classify(images).max(1)
        for row, (label, conf) in enumerate(zip(labels.tolist(), confidence.tolist(), strict=True)):
            if conf < job.labels.min_confidence:
                continue
            if quota:
                key = (label, counts[label])
                counts[label] += 1
            else:
                key = kept
                kept += 1
            if key in wanted:
                s = wanted[key]
                meta = {
                    "seed": seeds[row],
                    "index": base + s,
                    "candidate": j + row,
                    "pseudo_label_confidence": round(conf, 6),
                }
                found[s] = (images[row], {"label": label, "meta": meta}, s)
        j += job.config.batch_size
    return [found[s] for s in slots]


def _give_up(job: Job, images: range, left: list, tried: int) -> str:
    missing: dict[str, int] = {}
    for key in left:
        name = job.class_names[key[0]] if job.labels.quota else "any class"
        missing[name] = missing.get(name, 0) + 1
    counts = ", ".join(f"{name}: {n}" for name, n in missing.items())
    remedy = "lower labels.min_confidence" + (
        " or turn off labels.quota" if job.labels.quota else ""
    )
    return (
        f"images {images.start}..{images.stop - 1}: after {tried} candidates the classifier "
        f"still leaves open slots ({counts}); {remedy}"
    )


def image_batches(job: Job, samples: range, step=None):
    """The images of ``samples`` in order: sampled for their labels (a conditional generator)
    or pseudo-labelled (an unconditional one); ``step(rows)`` as the images come."""
    if job.filtered:
        yield from filtered_batches(job, samples, step)
    elif job.generator.conditional:
        yield from conditional_batches(job, samples, step)
    else:
        yield from pseudo_batches(job, samples, step)
