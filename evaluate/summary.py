"""The line that ends ``sio evaluate``: ID accuracy, the best near- and far-OOD detector by
AUROC, what was skipped, and where the results went."""

from __future__ import annotations

from pathlib import Path

from sio.evaluate.names import display_name


def best_detector(results: dict, group: str) -> tuple[str, float] | None:
    """(detector, mean AUROC) of the detector with the highest mean AUROC over ``group``'s
    sets, or None when no detector scored that group."""
    scored = [
        (detector, groups[group]["mean"]["auroc"])
        for detector, groups in results["metrics"].items()
        if group in groups
    ]
    return max(scored, key=lambda item: item[1]) if scored else None


def closing_line(results: dict, out: str | Path, scored: str) -> str:
    """``evaluate: ID acc 99.1%; best near-OOD AUROC 87.30 (KNN), far 99.00 (ViM); 12
    detectors scored; results in OUT/results.md and results.json``; ``scored``: the detectors
    scored and skipped, as ``summary_line`` says."""
    parts = [f"ID acc {results['id_acc']:.1f}%"] if "id_acc" in results else []
    for group in ("near", "far"):
        best = best_detector(results, group)
        if best is not None:
            parts.append(f"best {group}-OOD AUROC {best[1]:.2f} ({display_name(best[0])})")
    parts.append(scored)
    parts.append(f"results in {Path(out) / 'results.md'} and results.json")
    return "evaluate: " + "; ".join(parts)
