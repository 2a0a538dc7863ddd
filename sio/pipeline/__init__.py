"""The orchestrator: ``sio run`` over every stage from one pipeline.yaml, the study's points and
its report. It sits above the stages and uses their public package APIs only."""

from sio.core.lazy import lazy_exports

# each module and the public names it defines, imported on first use
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "sio.pipeline.config": ("PipelineConfig", "SweepConfig", "load_pipeline"),
        "sio.pipeline.run": ("run_pipeline",),
    },
)
