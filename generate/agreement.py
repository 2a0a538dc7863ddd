"""Label agreement: the share of a synthetic set's images that a classifier trained on real
images labels as the class they were generated for (job.py measures it). Below
``MIN_LABEL_AGREEMENT`` a set is flagged, by ``sio generate`` and ``sio run`` alike, with the
one warning ``agreement_warning`` writes (the study report shows it too)."""

from __future__ import annotations

# Below this label agreement a synthetic set is flagged: the classifier trained on real images
# recognises fewer than half of the generated images as the class they were generated for.
MIN_LABEL_AGREEMENT = 0.5


def agreement_warning(key: str, agreement: float | None, num_classes: int | None) -> str | None:
    """A loud warning when generator ``key``'s images mostly do not look like their labels
    (label agreement below MIN_LABEL_AGREEMENT; chance is 1/K, shown when K is given), else
    None."""
    if agreement is None or agreement >= MIN_LABEL_AGREEMENT:
        return None
    chance = f"chance {100 / num_classes:.1f}%, " if num_classes else ""
    return (
        f"WARNING: generator {key}: label agreement {100 * agreement:.1f}% ({chance}"
        f"flagged below {100 * MIN_LABEL_AGREEMENT:.0f}%): the "
        "real-trained classifier recognises few of its images as their class, so +SIO runs on "
        "them train on mislabelled or noise images. Train the generator longer or check it."
    )


def warning_banner(warning: str) -> str:
    """The warning between two lines of '!', as the commands print it."""
    return f"\n{'!' * 78}\n{warning}\n{'!' * 78}\n"
