"""The per-class audit of a synthetic set (``audit_set``), in one pass of a real-trained sio
classifier over the written set: per class the label agreement, the mean softmax confidence of
the conditioning label, and the Fréchet distance of the classifier's penultimate features of the
class's synthetic images to its real ones (fid.py's statistics; None where a side has fewer
than two images). agreement.py turns the per-class agreement into the one warning.
"""

from __future__ import annotations

import math

import torch

from sio.generate.fid import StatsAccumulator, frechet_distance

AUDIT_METRIC = "audit"  # the audit record's ``metric``, as fid.py's records name theirs


class ClassTally:
    """Per class: images, images the classifier labels as their class, the sum of the
    conditioning label's softmax probability, and the feature statistics."""

    def __init__(self, num_classes: int):
        self.count = torch.zeros(num_classes, dtype=torch.int64)
        self.agree = torch.zeros(num_classes, dtype=torch.int64)
        self.confidence = torch.zeros(num_classes, dtype=torch.float64)
        self.stats = [StatsAccumulator() for _ in range(num_classes)]

    def add(self, features: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> None:
        features, probs, labels = features.float().cpu(), probs.double().cpu(), labels.cpu()
        classes = len(self.count)
        self.count += torch.bincount(labels, minlength=classes)
        hits = (probs.argmax(1) == labels).long()
        self.agree += torch.bincount(labels, weights=hits, minlength=classes).long()
        own = probs.gather(1, labels[:, None])[:, 0]
        self.confidence += torch.bincount(labels, weights=own, minlength=classes)
        for k in labels.unique().tolist():
            self.stats[k].add(features[labels == k])

    def gaussian(self, k: int):
        return self.stats[k].result() if self.stats[k].count >= 2 else None


@torch.no_grad()
def judge_batch(classifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, softmax) of uint8 images: one pass through the backbone (every
    sio head's logits are ``fc(features)``)."""
    device = next(classifier.parameters()).device
    features = classifier.features(images.to(device))
    return features, classifier.fc(features).float().softmax(1)


def tally_set(
    shard_set, classifier, num_classes: int, *, batch_size: int, max_images=None, spread=False
):
    """``ClassTally`` of a shard set: all its images, or ``max_images`` of them (the first
    ones, or with ``spread`` every k-th, k = ⌈total / max_images⌉: a real set is often sorted
    by class)."""
    from sio.shardset import iter_batches, read_manifest

    step = 1
    if max_images is not None and spread:
        step = max(1, math.ceil(read_manifest(shard_set).num_samples / max_images))
    tally, seen, position = ClassTally(num_classes), 0, 0
    for images, labels in iter_batches(shard_set, batch_size):
        keep = torch.arange(position, position + len(images)) % step == 0
        position += len(images)
        images, labels = images[keep], labels[keep]
        if max_images is not None:
            images, labels = images[: max_images - seen], labels[: max_images - seen]
        if len(images):
            features, probs = judge_batch(classifier, images)
            tally.add(features, probs, labels.long())
        seen += len(images)
        if max_images is not None and seen >= max_images:
            break
    return tally


def _distance(synthetic, real) -> float | None:
    """The Fréchet distance of two ``GaussianStats`` (None when either is missing)."""
    if synthetic is None or real is None:
        return None
    return frechet_distance(synthetic.mean, synthetic.cov, real.mean, real.cov)


def _fraction(numerator, denominator) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def audit_set(
    synthetic,
    classifier,
    class_names,
    *,
    real=None,
    batch_size: int = 200,
    max_images: int | None = None,
    identity: dict | None = None,
    labelled_by_classifier: bool = False,
) -> dict:
    """The per-class audit record of ``synthetic`` under a real-trained ``classifier`` (a loaded
    sio classifier); with ``real`` (the real training set, same classes) the per-class Fréchet
    distances too. ``identity`` (the classifier's file and sha256) is copied into the record.
    Never a NaN: a class without images has None. ``labelled_by_classifier`` (pseudo-labels,
    which agree with their classifier by design): no agreement figures."""
    names = [str(n) for n in class_names]
    syn = tally_set(synthetic, classifier, len(names), batch_size=batch_size, max_images=max_images)
    distances = None
    if real is not None:
        ref = tally_set(
            real, classifier, len(names), batch_size=batch_size, max_images=max_images, spread=True
        )
        distances = {n: _distance(syn.gaussian(k), ref.gaussian(k)) for k, n in enumerate(names)}
    judged = not labelled_by_classifier
    record = {
        "metric": AUDIT_METRIC,
        "labels": "pseudo" if labelled_by_classifier else "conditional",
        "label_agreement": _fraction(syn.agree.sum(), syn.count.sum()) if judged else None,
        "label_agreement_per_class": {
            n: _fraction(syn.agree[k], syn.count[k]) for k, n in enumerate(names)
        }
        if judged
        else None,
        **_filtered_agreement(synthetic),
        "confidence_per_class": {
            n: _fraction(syn.confidence[k], syn.count[k]) for k, n in enumerate(names)
        },
        "fd_classifier_per_class": distances,
        "images_per_class": {n: int(syn.count[k]) for k, n in enumerate(names)},
        "real": None if real is None else str(real),
        **(identity or {}),
    }
    return _finite(record)


def _filtered_agreement(synthetic) -> dict:
    """For a set written under ``labels.filter: agree`` (every image kept agrees by design):
    the agreement of the candidates its generator drew, overall and per class, which is what
    predicts the harm (writing.py records it in the manifest)."""
    from sio.shardset import read_manifest

    quality = read_manifest(synthetic).provenance.get("quality")
    if not isinstance(quality, dict) or quality.get("filter") != "agree":
        return {}
    overall = quality.get("label_agreement")
    per_class = quality.get("candidate_agreement_per_class")
    if not _is_fraction(overall) or not isinstance(per_class, dict):
        return {}  # not as sio writes it: the kept images' own figures stand
    if not all(v is None or _is_fraction(v) for v in per_class.values()):
        return {}
    return {
        "labels": "filtered: agreement of the candidates drawn",
        "label_agreement": overall,
        "label_agreement_per_class": per_class,
    }


def _is_fraction(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _finite(value):
    """``value`` with every non-finite float made None (a results file holds no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def audit_generated(job, out, real, fid_config) -> dict | None:
    """The audit of the set a ``sio generate`` job wrote to ``out`` (None without a
    classifier), by the job's classifier; with ``real`` (``--classes-from``) the per-class
    Fréchet distances too. Recorded with the set's quality figures (quality.py: beside the
    published manifest, which stays as it is)."""
    from sio.generate.quality import record_quality

    if job.classifier is None:
        return None
    identity = {"classifier": job.classifier_path, "classifier_sha256": job.classifier_sha256}
    record = audit_set(
        out,
        job.classifier,
        job.class_names,
        real=real,
        batch_size=fid_config.batch_size,
        identity=identity,
        labelled_by_classifier=not job.generator.conditional,
    )
    record_quality(out, record)
    return record


def generated_report(job, out, manifest: dict, real, config) -> str:
    """What ``sio generate`` prints once the set is complete: its size, label agreement and
    worst class, and the one warning (agreement.py) where the audit flags it."""
    from sio.generate.agreement import agreement_warning, warning_banner, worst_classes

    record = audit_generated(job, out, real, config.fid) or {}
    agreement = (manifest["provenance"].get("quality") or {}).get("label_agreement")
    per_class = record.get("label_agreement_per_class")
    text = f", label agreement {100 * agreement:.1f}%" if agreement is not None else ""
    worst = worst_classes(per_class)
    if worst:
        text += f" (worst class '{worst[0][0]}' {100 * worst[0][1]:.1f}%)"
    lines = [f"{out}: {manifest['num_samples']} images in {len(manifest['shards'])} shards{text}"]
    warning = agreement_warning(
        job.generator.name, agreement, len(job.class_names), per_class, config.audit
    )
    if warning:
        lines.append(warning_banner(warning))
    return "\n".join(lines)
