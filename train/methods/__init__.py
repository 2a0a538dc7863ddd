"""Training methods, one loss each, registered in METHODS under their ``train.method`` name.

base.py holds the ``Method`` interface and the registry; each other module one method: ce,
logitnorm, ce_plus, cutmix, pixmix, oe, godin, vos. batch_transforms.py and ops.py are the
augmentations the methods run in the DataLoader workers.
"""

from sio.train.methods import (  # noqa: F401  (importing registers the methods)
    ce,
    ce_plus,
    cutmix,
    godin,
    logitnorm,
    oe,
    pixmix,
    vos,
)
from sio.train.methods.base import METHODS, Method, MethodContext, build_method, method_inputs
from sio.train.methods.godin import GodinClassifier

__all__ = ["METHODS", "GodinClassifier", "Method", "MethodContext", "build_method", "method_inputs"]
