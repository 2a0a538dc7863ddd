"""``evaluate.parity: openood``: the one table of constructor arguments that make each detector
compute as OpenOOD v1.5's own code (``openood/postprocessors``, 3c35632), quirks included.

``Searchable.from_config`` applies ``OPENOOD[name]`` over the detector's ``evaluate.<name>``
settings when the switch is on; a detector without an entry already computes as OpenOOD does
(its docstring says so). With the switch off (the default) sio keeps its departures, each
written in its detector's docstring.

What parity cannot reproduce, and why (the detector then raises or is skipped, as by default,
since sio never writes NaN or inf): a score OpenOOD makes NaN or inf (a class with no rows for
MDS, RMDS, SHE or OpenMax; a zero feature vector for KNN, NNGuide, SCALE; a zero template entry
for KLM, whose KL is then inf; OpenMax's float32 exp above ~88; a dim >= D for VIM or Residual,
whose residual is then empty).
"""

from __future__ import annotations

# OpenOOD v1.5's train loader batch: NNGuide's bank is whole batches of it (the issue's 256)
OPENOOD_LOADER_BATCH = 256

OPENOOD: dict[str, dict] = {
    # temp_scaling_postprocessor.py: LBFGS(lr=0.01, max_iter=50) from T = 1.5
    "tempscale": {"fit": "openood"},
    # openmax_postprocessor.py: weibull_tail = 20, weibull_alpha = 3, hard-coded
    "openmax": {"tail_size": 20, "alpha_rank": 3},
    # base_postprocessor.py: torch.softmax of float32 logits (margins above ~17 tie at 1.0)
    "msp": {"float32": True},
    # gen_postprocessor.py: float32 softmax, 1 - p in float32
    "gen": {"float32": True},
    # knn_postprocessor.py: normalizer(x) = x / ||x|| + 1e-10
    "knn": {"openood_normalizer": True},
    # nnguide_postprocessor.py: whole loader batches from the first until > floor(alpha N) rows
    "nnguide": {"loader_batch": OPENOOD_LOADER_BATCH},
    # residual_postprocessor.py: the principal space of ID val; dim 512 whatever D is
    "residual": {"split": "val", "dim_rule": "openood"},
}


def parity_arguments(name: str, parity: str) -> dict:
    """The constructor arguments that ``parity`` sets for detector ``name`` ({} when off)."""
    return dict(OPENOOD.get(name, {})) if parity == "openood" else {}
