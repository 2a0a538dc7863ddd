"""The shard sets a training run reads, from folders or URLs, checked against the real one."""

from __future__ import annotations

from dataclasses import dataclass

from sio.core.storage import as_location
from sio.shardset import Manifest, read_manifest, shard_urls


@dataclass(frozen=True)
class LocatedSet:
    """A shard set where the streams read it: its manifest, shard URLs and encoding. The location
    may be several mirrors (``URL1,URL2`` or a list: services serving one set); each shard URL
    then names them all, its own mirror (shard i: mirror i mod n) first."""

    location: str
    manifest: Manifest
    urls: tuple[str, ...]

    @classmethod
    def open(cls, location) -> LocatedSet:
        location = as_location(location)
        manifest = read_manifest(location)
        return cls(location, manifest, tuple(shard_urls(location, manifest)))

    @property
    def encoding(self) -> str:
        return self.manifest.encoding

    @property
    def expected(self) -> tuple[tuple[str, int], ...]:
        """Images per shard URL, for the streams' truncation check."""
        counts = (s.num_samples for s in self.manifest.shards)
        return tuple(zip(self.urls, counts, strict=True))


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


def open_synthetic(real: Manifest, synthetic, alpha: float, n_syn: int) -> LocatedSet | None:
    if not n_syn:
        return None
    if synthetic is None:
        raise ValueError(
            f"alpha = {alpha} puts {n_syn} synthetic samples in every batch, "
            "but no synthetic shard set was given"
        )
    source = LocatedSet.open(synthetic)
    check_compatible(real, source.manifest, "synthetic", same_classes=True)
    return source


def open_extras(real: Manifest, inputs: dict[str, str], counts: dict[str, int]):
    """(name, source, samples per batch) for each extra shard set of a method (OE's outliers,
    PixMix's mixing pictures): same channels and image size as the real set, any classes."""
    extras = []
    for name, count in counts.items():
        source = LocatedSet.open(inputs[name])
        check_compatible(real, source.manifest, name, same_classes=False)
        extras.append((name, source, count))
    return tuple(extras)
