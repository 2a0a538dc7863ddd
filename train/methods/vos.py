"""VOS (Du et al., "VOS: Learning what you don't know by virtual outlier synthesis", ICLR 2022).

Per-class FIFO queues hold the last ``queue_size`` penultimate features h of each class (real
and synthetic samples alike). Once every queue is full and the epoch is >= ``start_epoch``:
class means mu_k and one shared covariance S = X^T X / N + 1e-4 I of the centred queues give
N(mu_k, S); ``samples`` draws per class, of which the ``select`` least likely are the virtual
outliers v. With the learnable energy E(z) = log sum_k relu(w_k) exp(z_k) and a logistic head
on it, the regulariser is

    R = CE(logistic([E(z_ID); E(fc(v))]), [1 ... 1; 0 ... 0]),   L = CE(z, y) + 0.1 R.

Unlike the OpenOOD/SIO code (which detaches E and builds a fresh random energy weight on every
call, so their VOS trains like CE), R's gradient reaches the backbone through E(z_ID) and fc
through E(fc(v)). The test score is the energy: the evaluator's ``ebo`` (logsumexp of logits).

Draws: x = mu_k + L z with S = L L^T and z ~ N(0, I), so log N(x; mu_k, S) = const - |z|^2 / 2:
the least likely draws are exactly those with the largest |z|.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sio.core.seeding import derive_seed
from sio.train.methods.base import METHODS, Method


@METHODS.register("vos")
class VOS(Method):
    """CE plus 0.1 times the virtual-outlier energy regulariser (see the module docstring)."""

    def __init__(self, config, context):
        super().__init__(config, context)
        classes, dim = context.num_classes, context.feature_dim
        self.register_buffer("queue", torch.zeros(classes, config.vos.queue_size, dim))
        self.register_buffer("filled", torch.zeros(classes, dtype=torch.long))
        self.energy_weight = nn.Parameter(torch.rand(classes))  # VOS: uniform in [0, 1]
        self.logistic = nn.Linear(1, 2)
        # the step at which R switched on (-1: not yet; saved with the method's state)
        self.register_buffer("regulariser_step", torch.tensor(-1))
        batch = config.batch_size
        print(
            f"vos: the energy regulariser starts once each of the {classes} class queues holds "
            f"{config.vos.queue_size} features (balanced classes: after about "
            f"{-(-classes * config.vos.queue_size // batch)} steps of batch {batch}, epoch >= "
            f"{config.vos.start_epoch}); until then VOS trains as CE",
            flush=True,
        )

    def energy(self, logits: torch.Tensor) -> torch.Tensor:
        """Negative learnable energy log sum_k relu(w_k) exp(z_k), computed stably."""
        top = logits.max(dim=1, keepdim=True).values
        weighted = (F.relu(self.energy_weight) * torch.exp(logits - top)).sum(dim=1)
        return top.squeeze(1) + torch.log(weighted.clamp_min(1e-30))

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append each class's new features to its queue, dropping the oldest once full."""
        size = self.queue.shape[1]
        for label in labels.unique().tolist():
            new = features[labels == label][-size:]
            count = int(self.filled[label])
            take = min(size - count, len(new))
            self.queue[label, count : count + take] = new[:take]
            self.filled[label] += take
            rest = new[take:]
            if len(rest):
                self.queue[label] = torch.cat([self.queue[label, len(rest) :], rest])

    def ready(self, epoch: int) -> bool:
        full = bool((self.filled == self.queue.shape[1]).all())
        return full and epoch >= self.config.vos.start_epoch

    @torch.no_grad()
    def virtual_outliers(self, step: int) -> torch.Tensor:
        """The ``select`` least likely of ``samples`` draws per class: (K * select) x D."""
        settings = self.config.vos
        classes, _, dim = self.queue.shape
        means = self.queue.mean(dim=1)
        centred = (self.queue - means[:, None]).reshape(-1, dim).double()
        eye = torch.eye(dim, dtype=torch.float64, device=centred.device)
        chol = torch.linalg.cholesky(centred.T @ centred / len(centred) + 1e-4 * eye).float()
        generator = torch.Generator(device=self.queue.device)
        generator.manual_seed(derive_seed(self.context.seed, "vos", step))
        picks = []
        for label in range(classes):
            z = torch.randn(settings.samples, dim, generator=generator, device=means.device)
            far = z.norm(dim=1).topk(settings.select).indices
            picks.append(means[label] + z[far] @ chol.T)
        return torch.cat(picks)

    def regulariser(self, model, logits: torch.Tensor, step: int) -> torch.Tensor:
        """R = CE of the logistic head on [E(ID logits); E(fc(virtual outliers))], targets 1 / 0."""
        virtual_logits = model.fc(self.virtual_outliers(step))
        energies = torch.cat([self.energy(logits), self.energy(virtual_logits)])
        targets = torch.cat(
            [
                torch.ones(len(logits), dtype=torch.long, device=logits.device),
                torch.zeros(len(virtual_logits), dtype=torch.long, device=logits.device),
            ]
        )
        return F.cross_entropy(self.logistic(energies[:, None]), targets)

    def loss(self, model, batch):
        labels, step = batch["labels"], int(batch["step"])
        features = model.features(batch["images"])
        logits = model.fc(features)
        loss = F.cross_entropy(logits, labels)
        if self.training:
            self.enqueue(features.detach(), labels)
        epoch = step // self.context.steps_per_epoch
        if self.ready(epoch):
            if self.regulariser_step < 0:
                self.regulariser_step.fill_(step)
                print(f"vos: energy regulariser on from step {step} (epoch {epoch})", flush=True)
            loss = loss + self.config.vos.weight * self.regulariser(model, logits, step)
        return loss, logits
