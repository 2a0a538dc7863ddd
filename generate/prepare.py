"""Building a generation job, the one way ``sio generate``, ``sio serve`` and ``sio run`` do it.

``prepare_job(JobOptions) -> Job`` loads the real-trained classifier and the generator and
checks, before any image is made, that they fit the target set: the images' size and channels
(of the ``classes_from`` real set), the class names, and that the classifier was trained on
that size and those classes (``RunInfo.check_fits``). A misfit is one ``GenerationError`` line,
whichever command asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sio.generate.config import GenerateConfig, GeneratorConfig
from sio.generate.job import GenerationError, Job


@dataclass(frozen=True)
class JudgeClassifier:
    """The real-trained classifier a job is given (pseudo-labels for an unconditional
    generator, label agreement for a conditional one): the network, its checkpoint file and
    that file's sha256."""

    model: object = None
    path: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Target:
    """What the synthetic set must match: the real set's class names, image size, channels."""

    class_names: tuple[str, ...] | None = None
    image_size: int | None = None
    channels: int | None = None


@dataclass(frozen=True)
class JobOptions:
    """Everything a job is made of. ``classifier`` is a checkpoint (loaded and checked here);
    ``judge`` an already loaded network instead (its fit cannot be checked). ``classes_from``
    is a real shard set (folder or URL) whose class names, image size and channels the
    synthetic set takes; ``class_names`` and ``image_size`` give them without one. With
    ``size_from_target`` (the commands) a BigGAN must be given the target's size; without it
    (the package API) it may write its own."""

    generator: GeneratorConfig
    generator_dir: str | Path
    settings: GenerateConfig
    classifier: str | Path | None = None
    judge: JudgeClassifier = JudgeClassifier()
    classes_from: str | Path | None = None
    class_names: tuple[str, ...] | None = None
    image_size: int | None = None
    device: str = "cpu"
    what: str = "the synthetic set"
    size_from_target: bool = False


def prepare_job(options: JobOptions) -> Job:
    """Load the classifier and the generator, check that they fit the target set, and return
    the job (see the module docstring)."""
    from sio.generate.registry import load_generator
    from sio.train import load_classifier

    target = target_of(options.classes_from, options.image_size, options.class_names)
    judge, info = options.judge, None
    if options.classifier is not None and judge.model is None:
        model, info = load_classifier(options.classifier, options.device)
        judge = JudgeClassifier(model, str(options.classifier), info.sha256)
    size = target.image_size or (info.image_size[0] if info and info.image_size else None)
    if options.size_from_target and options.generator.name == "biggan" and size is None:
        raise GenerationError(
            "a biggan generator writes images of the target benchmark's size: give "
            "--classes-from REAL_SET, --image-size or a --classifier that records its size"
        )
    model = load_generator(options.generator, options.generator_dir, options.device, size)
    model.prepare(precision=options.settings.precision, compile=options.settings.compile)
    names = target.class_names or (info.class_names if info else None)
    if info is not None:
        side = (model.image_size, model.image_size)
        info.check_fits(options.what, side, names or info.class_names)
    if target.channels is not None and target.channels != model.channels:
        raise GenerationError(
            f"{options.classes_from} holds {target.channels}-channel images, the generator "
            f"makes {model.channels}"
        )
    return build_job(model, options.settings, options.generator.labels, names, judge)


def target_of(classes_from, image_size: int | None, class_names=None) -> Target:
    """The target of a job: the ``classes_from`` real set's (its size checked against
    ``image_size``), else the class names and size given."""
    names = tuple(class_names) if class_names else None
    if classes_from is None:
        return Target(names, image_size)
    from sio.shardset import read_manifest

    manifest = read_manifest(classes_from)
    height, width = manifest.image_size
    if height != width:
        raise GenerationError(f"{classes_from}: {height}x{width} images; generators make squares")
    if image_size is not None and image_size != height:
        raise GenerationError(
            f"--image-size {image_size}, but {classes_from} holds {height}x{width} images"
        )
    return Target(names or tuple(manifest.class_names), height, manifest.channels)


def build_job(model, config: GenerateConfig, labels, class_names, judge: JudgeClassifier) -> Job:
    """The job of a loaded generator, with its class names checked."""
    if not model.conditional and judge.model is None:
        raise GenerationError(
            "an unconditional generator needs a classifier for pseudo-labels "
            "(--classifier CHECKPOINT)"
        )
    _check_filter(model, labels, judge)
    names = class_names or (model.class_names if model.conditional else None)
    if names is None:
        raise GenerationError("pseudo-labels need the classifier's class names")
    if model.conditional and not model.class_names:
        model.use_class_names(names)  # a text-to-image generator draws the target's classes
    if model.conditional and len(names) != model.num_classes:
        raise GenerationError(
            f"{len(names)} class names for a generator with {model.num_classes} classes"
        )
    return Job(
        model,
        config,
        tuple(names),
        judge.model,
        judge.path,
        labels,
        classifier_sha256=judge.sha256,
    )


def _check_filter(model, labels, judge: JudgeClassifier) -> None:
    """``labels.filter`` and ``min_confidence`` where they apply (config.py's LabelConfig)."""
    if labels.filter == "agree" and not model.conditional:
        raise GenerationError(
            "labels.filter: agree is for class-conditional generators; an unconditional one's "
            "pseudo-labels are the classifier's by design (use labels.min_confidence)"
        )
    if labels.filter == "agree" and judge.model is None:
        raise GenerationError("labels.filter: agree needs a classifier (--classifier CHECKPOINT)")
    if model.conditional and labels.filter == "none" and labels.min_confidence > 0:
        raise GenerationError(
            "labels.min_confidence applies to a conditional generator only with "
            "labels.filter: agree"
        )


def generate_shard_set(
    generator_dir,
    out,
    config: GenerateConfig,
    generator: GeneratorConfig,
    *,
    classifier=None,
    classifier_path=None,
    classifier_sha256=None,
    class_names=None,
    classes_from=None,
    device="cpu",
    image_size=None,
    shards=None,
    rank=0,
    world_size=1,
    staging=None,
):
    """``prepare_job`` then ``run_job`` (resume.py): the package API ``sio run`` calls.
    ``classifier`` is a loaded network, ``classifier_path`` its checkpoint (loaded and checked
    when no network is given). Returns the manifest, or None while shards are missing."""
    from sio.generate.resume import run_job

    options = JobOptions(
        generator,
        generator_dir,
        config,
        classifier=classifier_path,
        judge=JudgeClassifier(
            classifier,
            None if classifier_path is None else str(classifier_path),
            classifier_sha256,
        ),
        classes_from=classes_from,
        class_names=class_names,
        image_size=image_size,
        device=device,
        what=f"the synthetic set {out}",
    )
    job = prepare_job(options)
    return run_job(job, out, shards=shards, rank=rank, world_size=world_size, staging=staging)
