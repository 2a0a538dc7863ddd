"""One batch from this rank's part of each stream: composed in the global batch's order (one
permutation seeded by (seed, step)), augmented with draws made for the whole global part of each
stream and sliced (so every rank and worker count gives the same images), then the method's
transform."""

from __future__ import annotations

import torch

from sio.core.seeding import torch_generator
from sio.train.accelerate import deferred_crop_flip
from sio.train.augment import apply_augment, augment_draws, join_draws, slice_draws
from sio.train.spec import MixSpec, Stream


def compose_order(spec: MixSpec, real: Stream | None, syn: Stream | None, step: int):
    """This rank's batch order: its real then synthetic samples, put in the order they take in
    the global batch's one permutation (seeded by (seed, step) alone)."""
    total_real = sum(real.shares) if real else 0
    total_syn = sum(syn.shares) if syn else 0
    permutation = torch.randperm(
        total_real + total_syn, generator=torch_generator(spec.seed, "compose", step)
    )
    mine = []
    if real:
        first = sum(real.shares[: spec.rank])
        mine.append(torch.arange(first, first + real.shares[spec.rank]))
    if syn:
        first = total_real + sum(syn.shares[: spec.rank])
        mine.append(torch.arange(first, first + syn.shares[spec.rank]))
    if sum(map(len, mine)) == len(permutation):  # this rank holds the whole global batch
        return permutation
    place = torch.argsort(permutation)  # each sample's place in the global batch
    mine = torch.cat(mine) if mine else torch.zeros(0, dtype=torch.int64)
    return torch.argsort(place.index_select(0, mine))


def part_draws(spec: MixSpec, stream: Stream, step: int) -> dict:
    """The augmentation draws of this rank's part of a stream: made for the stream's whole
    global part (seeded by (seed, stream, step)) and sliced."""
    generator = torch_generator(spec.seed, "augment", stream.name, step)
    draws = augment_draws(
        sum(stream.shares),
        spec.image_size,
        generator,
        padding=spec.crop_padding,
        hflip=spec.hflip,
        resized_crop=spec.resized_crop,
    )
    first = sum(stream.shares[: spec.rank])
    return slice_draws(draws, first, first + stream.shares[spec.rank])


def augment_part(spec: MixSpec, stream: Stream, images: torch.Tensor, step: int):
    """The recipe's augmentation of this rank's part of a stream (``part_draws``)."""
    mine = part_draws(spec, stream, step)
    return apply_augment(images, mine, padding=spec.crop_padding, resized_crop=spec.resized_crop)


def _empty(spec: MixSpec, device=None):
    shape = (0, spec.channels, *spec.image_size)
    return (
        torch.zeros(shape, dtype=torch.uint8, device=device),
        torch.zeros(0, dtype=torch.int64, device=device),
        [],
    )


def assemble(spec: MixSpec, streams: dict[str, Stream], parts: dict, step: int) -> dict:
    """One batch from this rank's part of each stream (``parts``: name -> (images, labels,
    keys)): composed in the global batch's order, augmented (each image with its own draws, so
    the same as augmenting the parts first), then the method's transform."""
    device = next((p[0].device for p in parts.values()), None)
    pieces = {name: parts.get(name) or _empty(spec, device) for name in ("real", "synthetic")}
    (real_images, real_labels, real_keys) = pieces["real"]
    (syn_images, syn_labels, syn_keys) = pieces["synthetic"]
    order = compose_order(spec, streams.get("real"), streams.get("synthetic"), step)
    draws = join_draws(
        [
            (part_draws(spec, streams[name], step) if name in streams else {}, len(piece[1]))
            for name, piece in pieces.items()
        ],
        order,
    )
    # index_select, not images[order]: torch's advanced indexing of a uint8 batch took
    # ~1 ms of a ~2 ms batch on one CPU thread, index_select ~0.05 ms (the same copy)
    images = torch.cat([real_images, syn_images]).index_select(0, order.to(device))
    labels = torch.cat([real_labels, syn_labels.to(real_labels.device)])
    is_synthetic = torch.arange(len(labels)) >= len(real_labels)
    merged = real_keys + syn_keys
    batch = {
        "labels": labels.index_select(0, order.to(labels.device)),
        "is_synthetic": is_synthetic.index_select(0, order),
        "step": step,
        "ids": {"real": real_keys, "synthetic": syn_keys},  # in position order (the trace)
        "keys": [merged[i] for i in order.tolist()] if len(merged) == len(order) else [],
    }
    if spec.device_augment:  # the draws travel with the images, the device crops
        batch["images"] = images
        batch.update(deferred_crop_flip(draws, len(images), spec.crop_padding))
    else:
        batch["images"] = apply_augment(
            images, draws, padding=spec.crop_padding, resized_crop=spec.resized_crop
        )
    for name, stream in streams.items():
        if name not in ("real", "synthetic"):
            batch[name] = augment_part(spec, stream, parts[name][0], step)
    if spec.transform is not None:
        generator = torch_generator(spec.seed, "method", step, spec.rank)
        batch = spec.transform(batch, generator)
    return batch
