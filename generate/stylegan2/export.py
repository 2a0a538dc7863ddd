"""``sio stylegan2-export PKL OUT_DIR``: a network pickle to safetensors, once.

Writes ``stylegan2.safetensors`` (the generator's parameters and buffers under their pickle
names) and ``stylegan2.json`` (format ``sio-stylegan2/1``: the init arguments, and the source
file's name and sha256). Later loads of OUT_DIR read no pickle. The weights stay NVIDIA's work
under its license (non-commercial use); sio never ships them.
"""

from __future__ import annotations

from pathlib import Path

import click

from sio.core.files import atomic_path, sha256_file, write_json_atomic

# sio.generate.stylegan2.load (torch) is imported on use: `--help` answers at once

LICENSE_NOTE = (
    "Weights from NVlabs/stylegan2-ada-pytorch are NVIDIA's, under the NVIDIA Source Code "
    "License (non-commercial use only); supplied by the user, not distributed with sio."
)


def export_safetensors(pkl: str | Path, out_dir: str | Path, network: str = "G_ema") -> Path:
    """Read ``network`` from the pickle (no code run), check it builds, write the export."""
    from safetensors.torch import save_file

    from sio.generate.stylegan2.load import (
        EXPORT_FORMAT,
        EXPORT_META,
        EXPORT_WEIGHTS,
        build_network,
        read_pickle,
    )

    pkl, out_dir = Path(pkl), Path(out_dir)
    spec, state = read_pickle(pkl, network)
    build_network(spec, state, pkl)  # refuse to export what would not load
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / EXPORT_WEIGHTS) as tmp:
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, tmp)
    meta = {
        "format": EXPORT_FORMAT,
        "init_kwargs": spec.to_kwargs(),
        "source": {"file": pkl.name, "sha256": sha256_file(pkl), "network": network},
        "license": LICENSE_NOTE,
    }
    write_json_atomic(out_dir / EXPORT_META, meta)
    return out_dir


@click.command("stylegan2-export")
@click.argument("pkl", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--network", default="G_ema", show_default=True, help="Which network to export.")
def stylegan2_export(pkl, out_dir, network):
    """Export a stylegan2-ada-pytorch PKL's generator to OUT_DIR as safetensors (read safely:
    none of the pickle's code runs); point generator.path at OUT_DIR afterwards.

    \b
    Examples:
      sio stylegan2-export cifar10.pkl weights/stylegan2-cifar10
      sio stylegan2-export network.pkl weights/sg2-g --network G
    """
    from sio.generate.stylegan2.load import EXPORT_META, EXPORT_WEIGHTS

    export_safetensors(pkl, out_dir, network)
    click.echo(f"{out_dir}: {EXPORT_WEIGHTS} + {EXPORT_META}")
