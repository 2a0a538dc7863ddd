"""Generate stage: generators (network + sampler) and resumable synthetic shard sets."""

from sio.core.lazy import lazy_exports

# each module and the public names it defines, imported on first use
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "sio.generate.agreement": (
            "MIN_LABEL_AGREEMENT",
            "agreement_warning",
            "warning_banner",
            "worst_classes",
        ),
        "sio.generate.audit": ("audit_set",),
        "sio.generate.biggan": ("BigGANGenerator",),
        "sio.generate.config": (
            "BYTE_NEUTRAL",
            "TRAIN_BYTE_NEUTRAL",
            "AuditConfig",
            "FidConfig",
            "GenerateConfig",
            "GeneratorConfig",
        ),
        "sio.generate.ddpm.model": ("DDPMGenerator",),
        "sio.generate.fid": ("fid_extractor", "measure_fid"),
        "sio.generate.ddpm.train": ("train_ddpm", "train_from_shard_set"),
        "sio.generate.job": ("GenerationError", "Job"),
        "sio.generate.prepare": (
            "JobOptions",
            "JudgeClassifier",
            "generate_shard_set",
            "prepare_job",
        ),
        "sio.generate.registry": ("GENERATORS", "load_generator", "weights_fingerprint"),
        "sio.generate.quality": ("read_quality", "record_quality"),
        "sio.generate.resume": ("run_job",),
        "sio.generate.stage": (
            "generate_stage",
            "generator_training_stage",
            "quality_stage",
            "training_definition",
        ),
        "sio.generate.stylegan2.export": ("export_safetensors",),
        "sio.generate.stylegan2.generator": ("StyleGAN2Generator",),
    },
)
