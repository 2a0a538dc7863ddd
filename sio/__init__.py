"""sio: synthetic in-distribution data for out-of-distribution detection.

The stages live in top-level folders (``generate/``, ``shards/``, ``train/``, ``evaluate/``) and
install as ``sio.generate``, ``sio.shards``, ``sio.train`` and ``sio.evaluate``; the foundation
(``sio.core``), the shard-set contract (``sio.shardset``) and the orchestrator (``sio.pipeline``,
``sio.cli``) live here. ARCHITECTURE.md says who may import whom.
"""

__version__ = "0.1.0"
