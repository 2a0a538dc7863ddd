"""``pipeline.yaml`` parsed once into typed, frozen dataclasses.

Unknown keys are rejected and every error names the file and the field path
(``pipeline.yaml: train.batch_size: expected an integer, got 'big' (str)``). There is no
inheritance and no templating: what the file says, plus these defaults, is what runs, and the
resolved config (``to_dict``) is saved next to every output.

Each stage owns its section next to its registries (``sio.shards.config``,
``sio.generate.config``, ``sio.train.config``, ``sio.evaluate.config``); here they are composed
into ``PipelineConfig`` with the study's ``sweep`` and the checks that span sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sio.core.config import ConfigError, check_alpha, load_yaml_dataclass, short, short_text
from sio.core.config import check as _check
from sio.core.storage import is_url
from sio.evaluate import EvaluateConfig
from sio.generate import AuditConfig, FidConfig, GenerateConfig, GeneratorConfig
from sio.shards import ShardConfig
from sio.train import TrainConfig


@dataclass(frozen=True)
class SweepConfig:
    """What ``sio run`` varies besides seeds. ``alphas``, ``num_synthetic`` and ``generators``
    (each a full generator section with its own ``label``) add values to the base point
    (``sio_alpha``, ``generate.num_images``, ``generator``). ``grid: false`` varies one axis at a
    time around the base point (the paper's figures); ``true`` runs every combination. Each
    generator is trained and sampled once, at its largest count; smaller counts are its first
    shards, so they must be multiples of ``generate.shard_size``."""

    alphas: tuple[float, ...] = ()
    num_synthetic: tuple[int, ...] = ()
    generators: tuple[GeneratorConfig, ...] = ()
    grid: bool = False

    def __post_init__(self):
        for i, alpha in enumerate(self.alphas):
            check_alpha(alpha, f"alphas[{i}]")
        for i, count in enumerate(self.num_synthetic):
            _check(count > 0, f"num_synthetic[{i}]", "must be positive")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``sio run`` does: baseline (alpha = 1) against +SIO (``sio_alpha``) over seeds,
    and the sweep's other alphas, synthetic counts and generators."""

    output_dir: str = "runs/digits"
    seeds: tuple[int, ...] = (0, 1, 2)
    sio_alpha: float = 0.8
    shard: ShardConfig = field(default_factory=ShardConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    fid: FidConfig = field(default_factory=FidConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self):
        check_alpha(self.sio_alpha, "sio_alpha")
        _check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", "must be distinct")
        keys = [g.key for g in self.generators]
        for i, key in enumerate(keys):
            _check(
                key not in keys[:i],
                f"sweep.generators[{i - 1}].label" if i else "generator.label",
                f"{short(key)} names two generators; give each a distinct label",
            )
        self._check_counts()
        self._check_alphas()

    @property
    def generators(self) -> tuple[GeneratorConfig, ...]:
        """The base generator, then the sweep's."""
        return (self.generator, *self.sweep.generators)

    def _check_counts(self) -> None:
        counts = (self.generate.num_images, *self.sweep.num_synthetic)
        shard_size = self.generate.shard_size
        for i, count in enumerate(counts):
            _check(
                count == max(counts) or count % shard_size == 0,
                f"sweep.num_synthetic[{i - 1}]" if i else "generate.num_images",
                f"{count} is a prefix of the generated set and must be a multiple of "
                f"generate.shard_size ({shard_size}) or the largest count",
            )

    def _check_alphas(self) -> None:
        swept = self.sweep.alphas or self.sweep.num_synthetic or self.sweep.generators
        _check(
            self.sio_alpha < 1 or not swept,
            "sio_alpha",
            "the sweep varies around the base point (generator, num_images, sio_alpha), "
            "which needs sio_alpha < 1 (alpha = 1 is the baseline, always run)",
        )
        names: dict[str, float] = {}
        for i, alpha in enumerate((self.sio_alpha, *self.sweep.alphas)):
            where = f"sweep.alphas[{i - 1}]" if i else "sio_alpha"
            seen = names.setdefault(f"{alpha:g}", alpha)
            _check(
                seen == alpha,
                where,
                f"{alpha} and {seen} would share the run folder name alpha{alpha:g}",
            )


def _check_shard_set(location: str, field_name: str, used_by: str) -> None:
    if is_url(location):
        return  # remote: read (and checked) when the stage opens it
    folder = Path(location)
    shown = short_text(str(folder))
    _check(folder.is_dir(), field_name, f"{shown} not found ({used_by} reads a shard set there)")
    _check(
        (folder / "manifest.json").is_file(),
        field_name,
        f"{shown} holds no manifest.json: not a shard set (`sio shard` and `sio generate` "
        "write them)",
    )


def check_references(config: PipelineConfig) -> None:
    """Every name and path of ``config``, checked before any stage runs, against the stages'
    registries (imported here, not when the file is parsed for a field or two): detectors,
    training methods, models, benchmarks and their dataset paths, generator folders, FID
    weights and the shard sets of OE and PixMix. Errors name the field (``evaluate.detectors[2]:
    unknown detector 'mps'; known: ...``); ``load_pipeline`` adds the file."""
    from sio.evaluate import DETECTORS
    from sio.shards import check_shard_config
    from sio.train import BACKBONES, METHODS, method_inputs

    for i, name in enumerate(config.evaluate.detectors):
        where = f"evaluate.detectors[{i}]"
        _check(name in DETECTORS, where, _unknown("detector", name, DETECTORS))
    train = config.train
    _check(
        train.method in METHODS, "train.method", _unknown("training method", train.method, METHODS)
    )
    _check(train.model in BACKBONES, "train.model", _unknown("model", train.model, BACKBONES))
    for name, location in method_inputs(train).items():  # OE's outliers, PixMix's pictures
        _check_shard_set(location, f"train.{train.method}.{name}", f"the {train.method} method")
    check_shard_config(config.shard)
    for i, generator in enumerate(config.generators):
        where = f"sweep.generators[{i - 1}].path" if i else "generator.path"
        _check(
            not generator.path or Path(generator.path).exists(),
            where,
            f"{short_text(generator.path)} not found (the {generator.name} generator loads "
            "from it; "
            "empty: train the built-in DDPM)",
        )
    weights = config.fid.inception_weights
    _check(
        not weights or Path(weights).is_file(),
        "fid.inception_weights",
        f"{short_text(weights)} not found (torch-fidelity's "
        "weights-inception-2015-12-05-6726825d.pth; "
        "empty: the classifier-feature distance)",
    )


def _unknown(kind: str, name: str, registry) -> str:
    return f"unknown {kind} {short(name)}; known: {', '.join(registry.names())}"


def load_pipeline(path: str | Path, *, check_paths: bool = True) -> PipelineConfig:
    """Read and validate a pipeline file; every error names the file and the field. With
    ``check_paths`` (the default) every name and path is checked too (``check_references``),
    so a typo fails now, not after hours of earlier stages."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: pipeline file not found. sio run reads a YAML file with the sections "
            "shard, generator, generate, train and evaluate; the repository's pipeline.yaml "
            "is a complete example."
        )
    config = load_yaml_dataclass(PipelineConfig, path)
    if check_paths:
        try:
            check_references(config)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return config
