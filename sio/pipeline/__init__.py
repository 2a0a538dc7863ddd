"""The orchestrator: ``sio run`` over every stage from one pipeline.yaml, the study's points and
its report. It sits above the stages and uses their public package APIs only."""

from sio.core.lazy import lazy_exports

_EXPORTS = {
    "PipelineConfig": "sio.pipeline.config",
    "SweepConfig": "sio.pipeline.config",
    "load_pipeline": "sio.pipeline.config",
    "run_pipeline": "sio.pipeline.run",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
