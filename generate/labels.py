"""Labels for synthetic images: balanced for conditional generators, pseudo-labels otherwise.

Sample j of a synthetic set is meant to be of class ``j mod K``, so every shard (and the whole
set) is balanced. A conditional generator is asked for exactly those classes. An unconditional
one is labelled by a classifier trained on real data, ``y = argmax f(x)`` with confidence
``max softmax f(x)``; with a quota each class fills only its own slots of the shard, and sampling
goes on until every slot is filled.
"""

from __future__ import annotations

import torch


def balanced_labels(first: int, count: int, num_classes: int) -> torch.Tensor:
    return torch.arange(first, first + count) % num_classes


@torch.no_grad()
def classify(classifier, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities of a classifier (in eval mode) for uint8 images."""
    device = next(classifier.parameters()).device
    return classifier(images.to(device)).float().softmax(1).cpu()


class QuotaFiller:
    """Accepts pseudo-labelled images into the open slots of one shard."""

    def __init__(self, targets: torch.Tensor, *, min_confidence: float, quota: bool):
        self.open = targets.bincount(minlength=int(targets.max()) + 1).clone() if quota else None
        self.remaining = len(targets)
        self.min_confidence = min_confidence

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def accept(self, probs: torch.Tensor) -> list[tuple[int, int, float]]:
        """(row, label, confidence) of the rows kept, in order."""
        confidence, labels = probs.max(1)
        kept = []
        for row, (label, conf) in enumerate(zip(labels.tolist(), confidence.tolist(), strict=True)):
            if self.remaining == 0:
                break
            if conf < self.min_confidence:
                continue
            if self.open is not None:
                if label >= len(self.open) or self.open[label] == 0:
                    continue
                self.open[label] -= 1
            kept.append((row, label, conf))
            self.remaining -= 1
        return kept

    def describe_missing(self, class_names) -> str:
        if self.open is None:
            return f"{self.remaining} images"
        return ", ".join(f"{class_names[c]}: {int(n)}" for c, n in enumerate(self.open) if n)
