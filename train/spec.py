"""What a streaming loader is asked for (``MixSpec``) and the shard sets it draws from, resolved
(``Stream``: shards with counts and hashes, encoding, every rank's share per batch, window)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sio.core.storage import parent_location
from sio.shardset import ShardRef, read_manifest
from sio.train.passes import Layout


@dataclass(frozen=True)
class MixSpec:
    real_urls: tuple[str, ...]
    synthetic_urls: tuple[str, ...]
    n_real: int  # this rank's real samples per batch
    n_syn: int
    channels: int
    image_size: tuple[int, int]
    steps_per_epoch: int
    seed: int
    rank: int = 0
    shuffle_window: int = 10_000  # samples per pass group (see passes.py)
    crop_padding: int = 0
    hflip: bool = False
    resized_crop: int = 0
    # (name, urls, this rank's samples per batch) of each extra source; labels are dropped
    extras: tuple[tuple[str, tuple[str, ...], int], ...] = ()
    # the method's batch transform: transform(batch, generator) -> batch
    transform: Callable | None = None
    # source name -> "png" | "records"; shard URL -> images; shard URL -> sha256 (absent: read
    # from the set's manifest next to the shards)
    encodings: tuple[tuple[str, str], ...] = ()
    expected: tuple[tuple[str, int], ...] = ()
    on_error: str = "raise"  # or "skip"
    # source name -> samples per batch of every rank (absent: this rank's count, one rank)
    shares: tuple[tuple[str, tuple[int, ...]], ...] = ()
    hashes: tuple[tuple[str, str], ...] = ()
    num_classes: int | None = None
    cache_dir: str | None = None
    cache_limit: int | None = None
    read_timeout: float = 600.0
    # seconds one fetch of a remote shard may take in all (a trickling server is cut off and
    # the fetch retried as a transport fault); None: sio.core.storage.fetch_deadline()
    fetch_deadline: float | None = None
    decoded_cache: bool = True  # decoded shards shared by the node's processes (rowcache.py)
    # un-augmented real/synthetic images plus their crop/flip draws (accelerate.py)
    device_augment: bool = False

    def counts(self) -> dict[str, int]:
        """This rank's samples per batch of each source."""
        return {
            "real": self.n_real,
            "synthetic": self.n_syn,
            **{name: n for name, _, n in self.extras},
        }

    def source_urls(self) -> dict[str, tuple[str, ...]]:
        return {
            "real": tuple(self.real_urls),
            "synthetic": tuple(self.synthetic_urls),
            **{name: tuple(urls) for name, urls, _ in self.extras},
        }

    def share_of(self, name: str) -> tuple[int, ...]:
        shares = dict(self.shares)
        if name in shares:
            return tuple(shares[name])
        if self.rank:
            raise ValueError(f"rank {self.rank} needs every rank's share of {name!r} (shares)")
        return (self.counts()[name],)


def check_spec(spec: MixSpec) -> None:
    if spec.n_real and not spec.real_urls:
        raise ValueError("n_real > 0 needs a real shard set")
    if spec.n_syn and not spec.synthetic_urls:
        raise ValueError("n_syn > 0 needs a synthetic shard set")
    if spec.on_error not in ("raise", "skip"):
        raise ValueError(f"on_error is 'raise' or 'skip', got {spec.on_error!r}")
    for name, urls, count in spec.extras:
        if count < 1 or not urls or name in ("real", "synthetic"):
            raise ValueError(f"extra source {name!r} needs shards and a count >= 1")
    if spec.fetch_deadline is not None and not spec.fetch_deadline > 0:
        raise ValueError(f"fetch_deadline must be positive seconds, got {spec.fetch_deadline}")


@dataclass(frozen=True)
class Stream:
    """One shard set as the batches consume it: its shards (URL, count, sha256), its encoding,
    the samples each rank takes per batch and the shuffle window."""

    name: str
    shards: tuple[ShardRef, ...]
    encoding: str
    shares: tuple[int, ...]
    window: int

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(shard.url for shard in self.shards)

    @property
    def layout(self) -> Layout:
        return Layout(self.name, tuple(shard.count for shard in self.shards), self.window)


def _manifest_of(urls: tuple[str, ...]):
    manifest = read_manifest(parent_location(urls[0]))
    by_name = {s.name: s for s in manifest.shards}
    return manifest, by_name


def resolve_streams(spec: MixSpec, shares: dict | None = None) -> dict[str, Stream]:
    """Every stream a batch draws from (a positive global count), with its shard counts and
    hashes from ``spec`` or else from the manifest next to its shards."""
    expected, hashes, encodings = dict(spec.expected), dict(spec.hashes), dict(spec.encodings)
    streams = {}
    for name, urls in spec.source_urls().items():
        share = tuple(shares[name]) if shares and name in shares else spec.share_of(name)
        if not sum(share):
            continue
        if not urls:
            raise ValueError(f"{name!r} has samples in every batch but no shard set")
        encoding = encodings.get(name)
        if all(url in expected for url in urls) and encoding is not None:
            shards = tuple(ShardRef(url, expected[url], hashes.get(url, "")) for url in urls)
        else:
            manifest, by_name = _manifest_of(urls)
            infos = [by_name[url.rsplit("/", 1)[-1]] for url in urls]
            shards = tuple(
                ShardRef(url, i.num_samples, hashes.get(url, i.sha256 or ""))
                for url, i in zip(urls, infos, strict=True)
            )
            encoding = encoding or manifest.encoding
        streams[name] = Stream(name, shards, encoding, share, spec.shuffle_window)
    return streams
