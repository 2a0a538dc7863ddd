"""The stages of one ``sio run`` (``PipelineRun``): each a folder under the output folder, run
through ``sio.core.stages`` (skipped when complete with the same definition, resumed, or
refused), or only judged in a dry run. run.py orders them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sio.core.files import sha256_file, write_json_atomic
from sio.core.stages import (
    COMPLETE_FILE,
    STAGE_FILE,
    StageDefinition,
    run_stage,
    stage_verdict,
)
from sio.generate import GeneratorConfig
from sio.pipeline.config import PipelineConfig
from sio.pipeline.estimate import (
    Estimate,
    measured_rates,
    measurement,
    network_passes,
    run_folders,
)
from sio.shardset import MANIFEST, read_manifest
from sio.train import CHECKPOINT


def shards_fingerprint(shard_set: Path) -> str:
    """sha256 over a shard set's shard list (names, counts, checksums): its content, whatever
    quality figures are later recorded in its manifest."""
    return read_manifest(shard_set).content_sha256


def baseline_name(seed: int) -> str:
    return f"alpha1-seed{seed}"


class Pending(Exception):
    """A stage's input that an earlier stage of a dry run would write first."""


class PipelineRun:
    """The stages of one ``sio run``, each a folder under ``out``. With ``dry``, each stage is
    only judged (``stage_verdict``, as ``run_stage`` judges it) and listed in ``plan``."""

    def __init__(self, config: PipelineConfig, out: Path, device: str, force: bool, dry=False):
        self.config, self.out, self.device, self.force = config, out, device, force
        self.timings: dict[str, float] = {}
        self.dry, self.plan, self.remade = dry, [], []
        self.estimate = Estimate()  # a dry run's time for the stages it would run
        self.rates = measured_rates(run_folders(out)) if dry else {}

    def stage(self, label, folder: Path, definition, work, resumable=(), units=lambda: 1):
        """Run (or, dry, judge) a stage. ``definition``: the ``StageDefinition`` the stage's API
        makes (it says which fields are ``resumable``), a plain dict (``resumable`` given here),
        or a function making either (called late: it may raise ``Pending`` in a dry run).
        ``units()``: the stage's work in its kind's unit (estimate.py), recorded when it
        completes; a dry run estimates its time from it."""
        if self.dry:
            return self._judge(label, folder, definition, resumable, units)
        made = _stage_definition(definition, resumable)
        record = measurement(label, units())
        run_stage(label, folder, made, work, force=self.force, timings=self.timings, record=record)

    def _judge(self, label, folder: Path, definition, resumable, units) -> None:
        try:
            made = _stage_definition(definition, resumable)
        except Pending as pending:
            path = Path(pending.args[0])
            shown = path.relative_to(self.out) if path.is_relative_to(self.out) else path
            why = f"after the earlier stage that writes {shown}"
            self.plan.append((label, "run", why))
            self._will_run(label, folder, units)
            return
        verdict = stage_verdict(folder, made.definition, self.force, made.resumable, made.defaults)
        action = "skip" if verdict.action == "skip" else ("run" if verdict.runs else "refused")
        self.plan.append((label, action, verdict.why))
        if verdict.runs:
            self._will_run(label, folder, units)

    def _will_run(self, label, folder: Path, units) -> None:
        self.remade.append(folder)
        try:
            amount = units()
        except Pending:  # its amount of work depends on a stage not run yet
            amount = None
        self.estimate.add(label, amount, self.rates)

    def pending(self, path: Path) -> bool:
        """In a dry run: ``path`` is not there yet or an earlier stage would rewrite it."""
        path = Path(path)
        return self.dry and (
            not path.exists() or any(f == path or f in path.parents for f in self.remade)
        )

    def fingerprint(self, path: Path, digest=sha256_file) -> str:
        """``digest(path)`` of a stage's input; in a dry run ``Pending`` when it is not final."""
        if self.pending(path):
            raise Pending(path)
        return digest(path)

    @property
    def real_sha(self) -> str:
        return self.fingerprint(self.real / MANIFEST)

    def shard(self) -> None:
        from sio.shards import read_benchmark, shard_stage, write_benchmark

        self.bench_dir = self.out / "benchmark"
        shard_config = self.config.shard
        self.stage(
            "shard",
            self.bench_dir,
            shard_stage(shard_config),
            lambda: write_benchmark(shard_config, self.bench_dir),
        )
        if self.pending(self.bench_dir / "benchmark.json"):
            self.benchmark, self.real = None, self.bench_dir / "id_train"
            return
        self.benchmark = read_benchmark(self.bench_dir)
        self.real = self.benchmark.id_splits["train"]

    def train(self, name: str, alpha: float, seed: int, synthetic: Path | None) -> Path:
        from sio.train import train_classifier, train_stage

        folder = self.out / "train" / name

        def definition():
            synthetic_sha = synthetic and self.fingerprint(synthetic, shards_fingerprint)
            return train_stage(self.config.train, alpha, seed, self.real_sha, synthetic_sha)

        def images():  # seen in training (the method's epochs aside)
            from sio.train import steps_per_epoch

            config = self.config.train
            real = self.fingerprint(self.real / MANIFEST, lambda p: read_manifest(p.parent))
            steps = config.steps_per_epoch or steps_per_epoch(real.num_samples, config.batch_size)
            return config.epochs * steps * config.batch_size

        self.stage(
            f"train {name}",
            folder,
            definition,
            lambda: train_classifier(
                real=self.real,
                synthetic=synthetic,
                alpha=alpha,
                seed=seed,
                config=self.config.train,
                out=folder,
                device=self.device,
                val=self.benchmark.id_splits.get("val"),  # val_acc per epoch; no batch changes
            ),
            units=images,
        )
        return folder / CHECKPOINT

    def generator_weights(self, generator: GeneratorConfig) -> Path:
        """generator.path if set, else a built-in DDPM trained on the real ID training set
        (one training per distinct model and training settings)."""
        from sio.generate import generator_training_stage, train_from_shard_set

        if generator.path:
            return Path(generator.path)

        def definition():
            return generator_training_stage(generator, self.real_sha)

        try:
            before = self._trained_before(definition().definition)
        except Pending:  # a dry run before the benchmark exists
            before = None
        stage_dir = before or self.out / "generator" / generator.key
        weights = stage_dir / "weights"
        self.stage(
            f"train generator {generator.key}",
            stage_dir,
            definition,
            # log.jsonl and the resumable training checkpoint beside weights/
            lambda: train_from_shard_set(self.real, generator, weights, self.device, stage_dir),
            units=lambda: generator.train.steps * generator.train.batch_size,
        )
        return weights

    def _trained_before(self, definition: dict) -> Path | None:
        """A complete generator folder made from ``definition``, under whatever label: one
        training per distinct definition, and renaming or reordering generators retrains none."""
        for stamp in sorted((self.out / "generator").glob(f"*/{STAGE_FILE}")):
            folder = stamp.parent
            if (folder / COMPLETE_FILE).is_file() and json.loads(stamp.read_text()) == definition:
                return folder
        return None

    def generate(self, generator: GeneratorConfig, num: int, judge: Path) -> Path:
        from sio.generate import generate_shard_set, generate_stage, weights_fingerprint

        weights = self.generator_weights(generator)
        folder = self.out / "synthetic" / generator.key
        job = dataclasses.replace(self.config.generate, num_images=num)

        def work():  # prepare_job checks the judge and generator fit the real set, as the CLI
            manifest = generate_shard_set(
                weights,
                folder,
                job,
                generator,
                classifier_path=str(judge),
                classes_from=self.real,
                device=self.device,
            )
            assert manifest is not None, "a single process writes every shard and the manifest"

        def definition():  # a resized set or other encoder threads: the job resumes
            weights_sha = self.fingerprint(weights, weights_fingerprint)
            return generate_stage(job, generator, weights_sha, self.fingerprint(judge))

        passes = network_passes(generator)
        self.stage(
            f"generate {generator.key}", folder, definition, work, units=lambda: num * passes
        )
        return folder

    def quality(self, key: str, synthetic: Path, judge: Path) -> dict:
        """FID (or the labelled classifier-feature distance) of a synthetic set's first
        ``generate.num_images`` images (every generator has at least those: one sample size for
        all), recorded in ``quality/<generator>/fid.json`` (the set's manifest stays as it is)."""
        from sio.generate import fid_extractor, measure_fid, quality_stage

        fid = self.config.fid
        folder = self.out / "quality" / key
        num_synthetic = self.config.generate.num_images  # every generator at one count

        def definition():  # a resized synthetic set is measured again (same first images)
            synthetic_sha = self.fingerprint(synthetic, shards_fingerprint)
            judge_sha = None if fid.inception_weights else self.fingerprint(judge)
            return quality_stage(fid, num_synthetic, synthetic_sha, self.real_sha, judge_sha)

        def work():
            extractor = fid_extractor(fid, judge, self.device)
            record = measure_fid(
                synthetic,
                self.real,
                extractor,
                batch_size=fid.batch_size,
                max_images=fid.max_images,
                num_synthetic=num_synthetic,
            )
            write_json_atomic(folder / "fid.json", record)  # the manifest stays as published

        self.stage(f"fid {key}", folder, definition, work, units=lambda: num_synthetic)
        if self.pending(folder / "fid.json"):
            return None
        return json.loads((folder / "fid.json").read_text())

    def audit(self, key: str, synthetic: Path, judge: Path) -> dict | None:
        """The per-class audit of a synthetic set by the judge classifier (generate/audit.py),
        recorded in ``quality/<generator>/audit/audit.json``."""
        from sio.generate import audit_set
        from sio.train import load_classifier

        folder = self.out / "quality" / key / "audit"
        batch_size, max_images = self.config.fid.batch_size, self.config.fid.max_images

        def definition():
            return {
                "max_images": max_images,
                "synthetic_shards_sha256": self.fingerprint(synthetic, shards_fingerprint),
                "real_manifest_sha256": self.real_sha,
                "classifier_sha256": self.fingerprint(judge),
            }

        def work():
            classifier, info = load_classifier(judge, self.device)
            pseudo = read_manifest(synthetic).provenance.get("labels", {}).get("mode") == "pseudo"
            record = audit_set(
                synthetic,
                classifier,
                self.benchmark.class_names,
                real=self.real,
                batch_size=batch_size,
                max_images=max_images,
                identity={"classifier": str(judge), "classifier_sha256": info.sha256},
                labelled_by_classifier=pseudo,
            )
            write_json_atomic(folder / "audit.json", record)

        # a resized synthetic set is audited again
        self.stage(f"audit {key}", folder, definition, work, ("synthetic_shards_sha256",))
        if self.pending(folder / "audit.json"):
            return None
        return json.loads((folder / "audit.json").read_text())

    def subset(self, key: str, synthetic: Path, num: int) -> Path:
        from sio.shardset import subset_shard_set

        folder = self.out / "synthetic" / f"{key}-n{num}"

        def definition():
            return {
                "source_shards_sha256": self.fingerprint(synthetic, shards_fingerprint),
                "num": num,
            }

        self.stage(
            f"subset {key} n{num}",
            folder,
            definition,
            lambda: subset_shard_set(synthetic, num, folder),
            ("source_shards_sha256",),  # the source grew: the same prefix, linked again
        )
        return folder

    def evaluate(self, name: str, checkpoint: Path) -> Path:
        from sio.evaluate import evaluate_checkpoint, evaluate_stage

        folder = self.out / "evaluate" / name
        self.stage(
            f"evaluate {name}",
            folder,
            lambda: evaluate_stage(
                self.config.evaluate,
                self.fingerprint(checkpoint),
                self.fingerprint(self.bench_dir / "benchmark.json"),
            ),
            lambda: evaluate_checkpoint(
                checkpoint, self.bench_dir, folder, self.config.evaluate, device=self.device
            ),
        )
        return folder


def _stage_definition(definition, resumable=()) -> StageDefinition:
    """The ``StageDefinition`` of ``PipelineRun.stage``'s ``definition`` argument."""
    made = definition() if callable(definition) else definition
    return made if isinstance(made, StageDefinition) else StageDefinition(made, tuple(resumable))
