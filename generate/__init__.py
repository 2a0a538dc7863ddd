"""Generate stage: generators (network + sampler) and resumable synthetic shard sets."""

from sio.core.lazy import lazy_exports

# each module and the public names it defines, imported on first use
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "sio.generate.agreement": ("MIN_LABEL_AGREEMENT", "agreement_warning", "warning_banner"),
        "sio.generate.biggan": ("BigGANGenerator",),
        "sio.generate.ddpm.model": ("DDPMGenerator",),
        "sio.generate.ddpm.train": ("train_ddpm", "train_from_shard_set", "training_definition"),
        "sio.generate.job": ("BYTE_NEUTRAL", "Job", "run_job"),
        "sio.generate.registry": (
            "GENERATORS",
            "generate_shard_set",
            "load_generator",
            "weights_fingerprint",
        ),
        "sio.generate.stylegan2.export": ("export_safetensors",),
        "sio.generate.stylegan2.generator": ("StyleGAN2Generator",),
    },
)
