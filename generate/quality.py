"""Quality figures of a published shard set (``sio fid``, the per-class audit), kept beside it.

A published manifest is never rewritten (subsets name it by its sha256, readers cache by it):
a figure measured after publication is written to ``<set>/quality/<metric>.json`` with the
``shards_sha256`` of the shards it was measured on (``Manifest.content_sha256``).
``read_quality`` joins the figures the manifest holds (the label agreement the generation job
measured) with those whose shards are still the set's: a figure of a set resized since is
left out. ``sio run`` keeps its own figures in its ``quality/<generator>/`` stage folders.
"""

from __future__ import annotations

import json
from pathlib import Path

from sio.core.files import write_json_atomic
from sio.core.storage import is_url
from sio.shardset import read_manifest

QUALITY_DIR = "quality"


def quality_file(shard_set, metric: str) -> Path:
    return Path(shard_set) / QUALITY_DIR / f"{metric}.json"


def record_quality(shard_set, record: dict) -> bool:
    """Write ``record`` to ``<shard_set>/quality/<record["metric"]>.json`` with the shards it
    was measured on; the manifest is left as it is. False (nothing written) for a URL."""
    if is_url(str(shard_set)):
        return False
    shards = read_manifest(shard_set).content_sha256
    path = quality_file(shard_set, record["metric"])
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(path, {**record, "shards_sha256": shards})
    return True


def read_quality(shard_set) -> dict:
    """The set's quality figures by metric: the manifest's ``provenance.quality`` joined with
    the recorded ones (``record_quality``) measured on the set's current shards."""
    manifest = read_manifest(shard_set)
    quality = manifest.provenance.get("quality")
    quality = dict(quality) if isinstance(quality, dict) else {}
    if is_url(str(shard_set)):
        return quality
    for path in sorted((Path(shard_set) / QUALITY_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"{path}: not a readable quality record ({err}); left out", flush=True)
            continue
        if isinstance(record, dict) and record.get("shards_sha256") == manifest.content_sha256:
            quality[path.stem] = record
    return quality
