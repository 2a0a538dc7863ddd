"""The objective a run trains: its classifier and training method, built from derived seeds,
one SGD optimiser over both, and the DDP wrapper under torchrun."""

from __future__ import annotations

import torch
from torch import nn

from sio.core.seeding import derive_seed
from sio.shardset import Manifest
from sio.train.accelerate import Acceleration
from sio.train.config import TrainConfig
from sio.train.distributed import World
from sio.train.methods import METHODS, MethodContext, build_method
from sio.train.models import build_classifier


class Objective(nn.Module):
    """The classifier and its training method, trained together by one optimiser."""

    def __init__(self, model: nn.Module, method: nn.Module):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, batch: dict):
        return self.method.loss(self.model, batch)


def wrap(objective: Objective, world: World, device) -> nn.Module:
    if world.size == 1:
        return objective
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if str(device).startswith("cuda") else None
    unused = bool(list(objective.method.parameters()))  # e.g. VOS's head before its queues fill
    return DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=unused)


def build_objective(config: TrainConfig, manifest: Manifest, seed: int, steps: int, device):
    """(classifier with the method's head, method), each initialised from its own derived seed
    without touching the global RNG state; ``steps`` is the number of steps per epoch."""
    method_class = METHODS.get(config.method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_classifier(
            config.model,
            in_channels=manifest.channels,
            num_classes=len(manifest.class_names),
            mean=manifest.pixel_mean,
            std=manifest.pixel_std,
            head=method_class.head,
            **method_class.head_options(config),
        )
    context = MethodContext(
        num_classes=len(manifest.class_names),
        feature_dim=model.backbone.feature_dim,
        seed=seed,
        steps_per_epoch=steps,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "method-init"))
        method = build_method(config, context)
    return Acceleration.of(config).prepare_model(model.to(device)), method.to(device)


def optimiser(config: TrainConfig, model, method):
    groups = method.param_groups(model)
    own = list(method.parameters())
    if own:
        groups.append({"params": own})
    optimizer = torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, method.lr_factor())
