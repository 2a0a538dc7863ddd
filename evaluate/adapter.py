"""``ModelAdapter``: any ``nn.Module`` behind the interface the evaluation uses.

``forward`` and ``features`` take uint8 images (or pixels in [0, 1], for ODIN's input
gradients), normalise them with ``mean``/``std`` (none: the model gets pixels in [0, 1]) and
return the logits or the penultimate features h; ``fc`` is the final linear layer. h is found in
one of three ways: the model's own ``features(x)`` method with ``fc`` (sio's classifiers), the
input of the final linear layer named ``fc_name`` (a forward pre-hook: torchvision's ``fc``), or
the output, flattened, of the module named ``layer`` (a forward hook). ``name`` names the model
in errors; ``input_channels``, when set, repeats a grey image's channel to that many.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ModelError(ValueError):
    """A model that does not fit the evaluation; the message names the model, layer or key."""


class ModelAdapter(nn.Module):
    """``model`` behind sio's classifier interface (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        fc_name: str = "fc",
        layer: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str | None = None,
    ):
        super().__init__()
        self.model = model.eval()
        self.name = name or type(model).__name__
        self.input_channels: int | None = None  # set: a grey image's channel is repeated to it
        modules = dict(model.named_modules())
        if fc_name not in modules or not isinstance(modules[fc_name], nn.Linear):
            linear = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
            raise ModelError(
                f"the model has no nn.Linear named {fc_name!r} for its final layer; its linear "
                f"layers: {linear or 'none'} (pass fc_name=...)"
            )
        self.fc_name = fc_name
        self.layer = layer
        if layer is not None and layer not in modules:
            raise ModelError(f"the model has no module named {layer!r} (layer=...)")
        self.own_features = (
            layer is None
            and callable(getattr(model, "features", None))
            and not isinstance(model.features, nn.Module)
            and fc_name == "fc"
        )
        shape = (1, -1, 1, 1)
        self.register_buffer(
            "mean", None if mean is None else torch.tensor(mean, dtype=torch.float32).view(shape)
        )
        self.register_buffer(
            "std", None if std is None else torch.tensor(std, dtype=torch.float32).view(shape)
        )

    @property
    def fc(self) -> nn.Linear:
        return dict(self.model.named_modules())[self.fc_name]

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        if self.input_channels is not None and x.shape[1] == 1 < self.input_channels:
            x = x.expand(-1, self.input_channels, -1, -1)  # grey to the stem's channels
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.pixels(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pixels(images)
        if self.own_features:
            return self.model.features(x)
        captured = []
        if self.layer is None:
            handle = self.fc.register_forward_pre_hook(
                lambda module, args: captured.append(args[0])
            )
        else:
            target = dict(self.model.named_modules())[self.layer]
            handle = target.register_forward_hook(
                lambda module, args, output: captured.append(output)
            )
        try:
            self.model(x)
        finally:
            handle.remove()
        if not captured:
            where = self.layer or self.fc_name
            raise ModelError(f"the model's forward pass never ran its module {where!r}")
        features = captured[-1].flatten(1)
        if features.shape[1] != self.fc.in_features:
            raise ModelError(
                f"the features of {self.layer or self.fc_name!r} have width "
                f"{features.shape[1]}, but {self.fc_name} takes {self.fc.in_features}"
            )
        return features
