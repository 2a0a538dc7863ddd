"""The shard sets a training run reads besides the real one, checked against it."""

from __future__ import annotations

from sio.shards import Manifest, read_manifest, shard_urls


def check_compatible(real: Manifest, other: Manifest, what: str, *, same_classes: bool) -> None:
    """Refuse a shard set whose images (and, for synthetic sets, classes) differ from the real."""
    pairs = {
        "channels": (real.channels, other.channels),
        "image_size": (tuple(real.image_size), tuple(other.image_size)),
    }
    if same_classes:
        pairs = {"class_names": (real.class_names, other.class_names), **pairs}
    for name, (real_value, other_value) in pairs.items():
        if real_value != other_value:
            raise ValueError(
                f"real and {what} shard sets differ in {name}: {real_value} vs {other_value}"
            )


def synthetic_urls(real_manifest: Manifest, synthetic, alpha: float, n_syn: int) -> list[str]:
    if not n_syn:
        return []
    if synthetic is None:
        raise ValueError(
            f"alpha = {alpha} puts {n_syn} synthetic samples in every batch, "
            "but no synthetic shard set was given"
        )
    syn_manifest = read_manifest(synthetic)
    check_compatible(real_manifest, syn_manifest, "synthetic", same_classes=True)
    return shard_urls(synthetic, syn_manifest)


def extra_sources(real_manifest: Manifest, inputs: dict[str, str], counts: dict[str, int]):
    """(name, urls, samples per batch) for each extra shard set of a method (OE's outliers,
    PixMix's mixing pictures): same channels and image size as the real set, any classes."""
    extras = []
    for name, count in counts.items():
        manifest = read_manifest(inputs[name])
        check_compatible(real_manifest, manifest, name, same_classes=False)
        extras.append((name, tuple(shard_urls(inputs[name], manifest)), count))
    return tuple(extras)
