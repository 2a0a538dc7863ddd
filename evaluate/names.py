"""The one mapping from a detector's id (``msp``, ``vim``, ...) to the name papers print."""

from __future__ import annotations

DISPLAY_NAMES = {
    "openmax": "OpenMax",
    "msp": "MSP",
    "tempscale": "TempScale",
    "odin": "ODIN",
    "mds": "MDS",
    "rmds": "RMDS",
    "ebo": "EBO",
    "gradnorm": "GradNorm",
    "react": "ReAct",
    "mls": "MLS",
    "klm": "KLM",
    "vim": "ViM",
    "knn": "KNN",
    "dice": "DICE",
    "ash": "ASH",
    "she": "SHE",
    "godin": "G-ODIN",
    "gen": "GEN",
    "nnguide": "NNGuide",
    "relation": "Relation",
    "scale": "SCALE",
    "fdbd": "fDBD",
    "nci": "NCI",
    "vra": "VRA",
    "residual": "Residual",
}


def display_name(detector: str) -> str:
    """``vim`` -> ``ViM``; a detector without an entry keeps its id."""
    return DISPLAY_NAMES.get(detector, detector)
