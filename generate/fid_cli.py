"""``sio fid``: the Fréchet distance of a synthetic shard set to a real one."""

from __future__ import annotations

import dataclasses

import click

from sio.core.cli import config_option, device_option, field_range, pipeline_config
from sio.generate.config import FidConfig


@click.command()
@click.argument("synthetic")
@click.option("--real", required=True, help="The real shard set (folder or URL).")
@click.option(
    "--inception",
    type=click.Path(dir_okay=False),
    default=None,
    help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth: FID "
    "(default: the config's fid.inception_weights).",
)
@click.option(
    "--inception-sha256",
    default=None,
    help="Expected sha256 (or its prefix) of the weights (default: the pinned file's).",
)
@click.option(
    "--classifier",
    type=click.Path(),
    default=None,
    help="checkpoint.pt of a real-trained classifier: without Inception weights, the "
    "Fréchet distance of its penultimate features (reported as fd_classifier, not FID).",
)
@click.option("--batch-size", type=field_range(FidConfig, "batch_size"), default=None)
@click.option(
    "--max-images",
    type=field_range(FidConfig, "max_images"),
    default=None,
    help="Use each set's first N images.",
)
@config_option
@device_option
def fid(
    synthetic,
    real,
    inception,
    inception_sha256,
    classifier,
    batch_size,
    max_images,
    config_path,
    device,
):
    """Fréchet distance of shard set SYNTHETIC to --real; recorded in SYNTHETIC/quality/.

    The manifest is left as it is; the real set's statistics are cached outside it
    ($SIO_CACHE_DIR/fid-stats, else ~/.cache/sio/fid-stats).

    With --inception (torch-fidelity's InceptionV3 weights) it is FID; otherwise it is the
    same distance in --classifier's penultimate features, recorded as fd_classifier.

    \b
    Examples:
      sio fid data/synthetic --real data/digits/id_train --classifier runs/base0/checkpoint.pt
      sio fid data/synthetic --real data/cifar10/id_train \\
          --inception weights-inception-2015-12-05-6726825d.pth --max-images 10000
    """
    overrides = {
        "inception_weights": inception,
        "inception_sha256": inception_sha256,
        "batch_size": batch_size,
        "max_images": max_images,
    }
    config = dataclasses.replace(
        pipeline_config(config_path).fid, **{k: v for k, v in overrides.items() if v is not None}
    )
    import torch  # after the config: a mistake in it answers at once

    from sio.generate.fid import fid_extractor, measure_fid
    from sio.generate.quality import quality_file, record_quality

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = fid_extractor(config, classifier, device)
    record = measure_fid(
        synthetic, real, extractor, batch_size=config.batch_size, max_images=config.max_images
    )
    written = record_quality(synthetic, record)
    click.echo(
        f"{record['metric']} = {record['value']:.4f} ({record['n_synthetic']} synthetic vs "
        f"{record['n_real']} real images; {record['extractor']})"
        + (
            f"; recorded in {quality_file(synthetic, record['metric'])}"
            if written
            else "; not recorded: the set is not a local folder"
        )
    )
