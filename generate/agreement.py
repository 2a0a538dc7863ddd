"""Label agreement: the share of a synthetic set's images that a classifier trained on real
images labels as the class they were generated for, over the whole set (writing.py measures it
while generating) and per class (audit.py). One class whose synthetic images are off-manifold
is what makes SIO hurt far-OOD detection (issue 27: a DDPM whose "1"s were squiggles took
far-OOD AUROC down 19 points at a whole-set agreement of 76.5 %), and a whole-set figure hides
it.

``agreement_warning`` is the one warning, printed by ``sio generate`` and ``sio run`` alike and
shown in the study report: a set below ``audit.min_agreement`` or any class below
``audit.min_class_agreement`` (sio.generate.config.AuditConfig).
"""

from __future__ import annotations

from dataclasses import dataclass

from sio.generate.config import AuditConfig

# The default thresholds (audit.min_agreement, audit.min_class_agreement)
MIN_LABEL_AGREEMENT = AuditConfig().min_agreement
MIN_CLASS_AGREEMENT = AuditConfig().min_class_agreement


@dataclass(frozen=True)
class Flagged:
    """What the audit flags: the set's agreement when below its threshold, and each class
    below the class threshold, worst first."""

    agreement: float | None
    classes: tuple[tuple[str, float], ...]

    def __bool__(self) -> bool:
        return self.agreement is not None or bool(self.classes)


def worst_classes(per_class: dict | None) -> list[tuple[str, float]]:
    """(class, agreement) of every class with images, worst first (ties in class order)."""
    judged = [(name, value) for name, value in (per_class or {}).items() if value is not None]
    return sorted(judged, key=lambda item: item[1])


def flagged(agreement, per_class, thresholds: AuditConfig) -> Flagged:
    low = agreement if agreement is not None and agreement < thresholds.min_agreement else None
    classes = [(n, v) for n, v in worst_classes(per_class) if v < thresholds.min_class_agreement]
    return Flagged(low, tuple(classes))


def agreement_warning(
    key: str,
    agreement: float | None,
    num_classes: int | None,
    per_class: dict | None = None,
    thresholds: AuditConfig | None = None,
) -> str | None:
    """A loud warning when generator ``key``'s images do not look like their labels: the whole
    set below ``thresholds.min_agreement`` (chance is 1/K, shown when K is given) or any class
    of ``per_class`` (class name -> agreement) below ``thresholds.min_class_agreement``, naming
    each such class, worst first; else None."""
    thresholds = thresholds or AuditConfig()
    found = flagged(agreement, per_class, thresholds)
    if not found:
        return None
    parts = []
    if found.classes:
        named = ", ".join(f"class '{n}' agrees {100 * v:.1f}%" for n, v in found.classes)
        parts.append(f"{named} (flagged below {100 * thresholds.min_class_agreement:.0f}%)")
    if agreement is not None:
        chance = f"chance {100 / num_classes:.1f}%, " if num_classes else ""
        verdict = f"flagged below {100 * thresholds.min_agreement:.0f}%"
        if found.agreement is None:
            verdict = f"at least {100 * thresholds.min_agreement:.0f}%"
        parts.append(f"label agreement {100 * agreement:.1f}% ({chance}{verdict})")
    return (
        f"WARNING: generator {key}: SIO is likely to hurt far-OOD: {'; '.join(parts)}. The "
        "real-trained classifier does not recognise these images as their class, so +SIO runs "
        "on them train on mislabelled or off-manifold images. Train the generator longer, "
        "check it (sio shards show), or drop the classes named."
    )


def warning_banner(warning: str) -> str:
    """The warning between two lines of '!', as the commands print it."""
    return f"\n{'!' * 78}\n{warning}\n{'!' * 78}\n"
