"""Generate stage: generators (network + sampler) and resumable synthetic shard sets."""

from sio.core.lazy import lazy_exports

_EXPORTS = {
    "BigGANGenerator": "sio.generate.biggan",
    "DDPMGenerator": "sio.generate.ddpm.model",
    "train_ddpm": "sio.generate.ddpm.train",
    "train_from_shard_set": "sio.generate.ddpm.train",
    "Job": "sio.generate.job",
    "run_job": "sio.generate.job",
    "GENERATORS": "sio.generate.registry",
    "generate_shard_set": "sio.generate.registry",
    "load_generator": "sio.generate.registry",
    "weights_fingerprint": "sio.generate.registry",
    "export_safetensors": "sio.generate.stylegan2.export",
    "StyleGAN2Generator": "sio.generate.stylegan2.generator",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
