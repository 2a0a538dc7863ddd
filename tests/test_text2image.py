"""Text-to-image generators through diffusers (issue 27): a tiny random Stable Diffusion pipeline
built here from configs (UNet2DConditionModel, AutoencoderKL, a two-layer CLIP text encoder, a
CLIP tokenizer from a vocabulary and merges written here), saved as diffusers saves one, and
driven end to end: `sio generate` writes a set prompted per class, each image a function of its
seed alone (batch 1 and 3 give the same bytes), and `sio serve` serves exactly those bytes."""

from __future__ import annotations

import importlib.util
import json
import signal
import string
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.config import ConfigError, parse_dataclass
from sio.generate.config import GeneratorConfig
from sio.generate.registry import load_generator
from sio.shardset import ShardSetWriter, iter_samples, read_manifest

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

BIN = Path(sys.executable).parent
CLASSES = ("cat", "dog")
SETTINGS = {
    "steps": 2,
    "guidance": 2.0,
    "resolution": 16,
    "negative_prompt": "blurry",
    "prompts": [{"name": "dog", "prompt": "a photo of a small dog"}],
}


def write_tokenizer_files(folder: Path) -> Path:
    """A CLIP BPE vocabulary of the letters (inside and ending a word) and no merges."""
    folder.mkdir(parents=True)
    letters = list(string.ascii_lowercase)
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A tiny random StableDiffusionPipeline (16x16 images, 8x8 latents), saved."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("text2image")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16),
            layers_per_block=1,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=8,
            norm_num_groups=4,
            attention_head_dim=2,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=16,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
                hidden_size=8,
                intermediate_size=16,
                num_attention_heads=2,
                num_hidden_layers=2,
                vocab_size=64,
                max_position_embeddings=16,
            )
        )
    files = write_tokenizer_files(root / "tokenizer-files")
    tokenizer = CLIPTokenizer(
        str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=16
    )
    # an ancestral sampler: every step draws noise, from each image's own generator
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        clip_sample=False,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(root / "pipeline")
    return root / "pipeline"


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    """An 8x8 RGB real set of the classes cat and dog: the target's names, size, channels."""
    folder = tmp_path_factory.mktemp("real") / "real"
    rng = np.random.default_rng(0)
    with ShardSetWriter(
        folder,
        kind="real",
        name="real",
        image_size=(8, 8),
        channels=3,
        class_names=CLASSES,
        shard_size=4,
    ) as writer:
        for i in range(4):
            writer.write(f"r{i}", rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), i % 2, {})
    return folder


def section(pipeline: Path, settings: dict) -> dict:
    """The generator section of pipeline.yaml for the pipeline folder."""
    return {"name": "text2image", "path": str(pipeline), "text2image": settings}


def write_config(folder: Path, pipeline: Path, **settings) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"generator": section(pipeline, {**SETTINGS, **settings})}))
    return path


def invoke(*args):
    return CliRunner().invoke(get_cli(), [str(a) for a in args])


def generate(tmp_path, pipeline_dir, real_set, out, *options):
    config = write_config(tmp_path, pipeline_dir)
    return invoke(
        "generate", "--config", config, "--generator-dir", pipeline_dir,
        "--classes-from", real_set, "--out", out, "--num", 6, "--shard-size", 3,
        "--network-batch", 3, "--device", "cpu", *options,
    )  # fmt: skip


def test_generate_writes_a_prompted_set_whose_bytes_do_not_depend_on_the_batch(
    tmp_path, pipeline_dir, real_set
):
    one = generate(tmp_path, pipeline_dir, real_set, tmp_path / "b1", "--batch-size", 1)
    assert one.exit_code == 0, one.output
    three = generate(tmp_path, pipeline_dir, real_set, tmp_path / "b3", "--batch-size", 3)
    assert three.exit_code == 0, three.output
    manifest = read_manifest(tmp_path / "b1")
    assert manifest.num_samples == 6 and manifest.channels == 3
    assert tuple(manifest.image_size) == (8, 8) and tuple(manifest.class_names) == CLASSES
    settings = manifest.provenance["settings"]
    assert settings["prompts"] == ["a photo of a cat", "a photo of a small dog"]
    assert settings["negative_prompt"] == "blurry" and settings["steps"] == 2
    assert [s.sha256 for s in manifest.shards] == [
        s.sha256 for s in read_manifest(tmp_path / "b3").shards
    ]
    images, labels, metas = zip(*iter_samples(tmp_path / "b1"), strict=True)
    assert list(labels) == [0, 1, 0, 1, 0, 1]
    assert len({image.tobytes() for image in images}) == 6  # one image per seed


def test_each_image_is_a_function_of_its_seed_and_class(pipeline_dir):
    config = parse_dataclass(GeneratorConfig, section(pipeline_dir, SETTINGS), "")
    generator = load_generator(config, pipeline_dir, "cpu", image_size=8)
    generator.use_class_names(CLASSES)
    generator.prepare(network_batch=3)
    labels, seeds = torch.tensor([1, 0, 1, 1, 0]), [11, 5, 7, 3, 2]
    together = generator.sample_seeds(labels, seeds)
    assert together.shape == (5, 3, 8, 8) and together.dtype == torch.uint8
    for i in (0, 3, 4):  # alone, or in another batch: the same bytes
        alone = generator.sample_seeds(labels[i : i + 1], seeds[i : i + 1])
        assert torch.equal(alone[0], together[i])
    shuffled = generator.sample_seeds(labels.flip(0), seeds[::-1])
    assert torch.equal(shuffled.flip(0), together)
    other_class = generator.sample_seeds(torch.tensor([0]), seeds[:1])
    assert not torch.equal(other_class[0], together[0])  # the prompt matters


def test_grey_images_for_a_grey_benchmark(pipeline_dir):
    settings = {**SETTINGS, "grey": True, "class_names": list(CLASSES)}
    config = parse_dataclass(GeneratorConfig, section(pipeline_dir, settings), "")
    generator = load_generator(config, pipeline_dir, "cpu", image_size=4)
    generator.prepare(network_batch=2)
    images = generator.sample_seeds(torch.tensor([0, 1]), [1, 2])
    assert images.shape == (2, 1, 4, 4) and generator.channels == 1


def test_sio_serve_gives_the_bytes_sio_generate_wrote(tmp_path, pipeline_dir, real_set):
    result = generate(tmp_path, pipeline_dir, real_set, tmp_path / "offline", "--batch-size", 3)
    assert result.exit_code == 0, result.output
    config = write_config(tmp_path, pipeline_dir)
    process = subprocess.Popen(
        [
            str(BIN / "python"),
            "-m",
            "sio",
            "serve",
            str(pipeline_dir),
            "--port",
            "0",
            "--config",
            str(config),
            "--classes-from",
            str(real_set),
            "--num-images",
            "6",
            "--shard-size",
            "3",
            "--batch-size",
            "3",
            "--network-batch",
            "3",
            "--device",
            "cpu",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = process.stdout.readline()
        while line and not line.startswith("serving"):
            line = process.stdout.readline()
        assert "serving 6 images in 2 shards of text2image" in line, line
        url = line.split(" at ", 1)[1].split("/manifest.json")[0]
        for shard in read_manifest(tmp_path / "offline").shards:
            with urllib.request.urlopen(f"{url}/{shard.name}", timeout=120) as response:
                assert response.read() == (tmp_path / "offline" / shard.name).read_bytes()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output


def test_without_transformers_one_line_names_the_extra(
    tmp_path, pipeline_dir, real_set, monkeypatch
):
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else found(name, *a),
    )
    result = generate(tmp_path, pipeline_dir, real_set, tmp_path / "out", "--batch-size", 3)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: generator text2image needs the transformers package (its text encoder), an "
        "optional extra: pip install 'sio[text2image]'"
    )
    assert not (tmp_path / "out").exists()


def test_a_folder_without_a_pipeline_is_one_line(tmp_path, pipeline_dir, real_set):
    (tmp_path / "empty").mkdir()
    config = write_config(tmp_path, pipeline_dir)
    result = invoke(
        "generate", "--config", config, "--generator-dir", tmp_path / "empty",
        "--classes-from", real_set, "--out", tmp_path / "out", "--num", 2, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "model_index.json: missing; a text2image generator folder" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"prompt": "a photo"}, "prompt: 'a photo': a template holding {name}"),
        ({"resolution": 12}, "resolution: must be a multiple of 8"),
        ({"steps": 0}, "steps: must be in 1..1000"),
        ({"guidance": -1}, "guidance: must be in 0..100"),
        ({"class_names": ["cat"], "prompts": [{"name": "dog", "prompt": "x"}]}, "not among"),
    ],
)
def test_settings_are_checked(settings, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("(", r"\(")):
        parse_dataclass(GeneratorConfig, section(Path("p"), settings), "g")


def test_override_of_a_class_the_target_lacks_is_one_line(tmp_path, pipeline_dir, real_set):
    config = write_config(tmp_path, pipeline_dir, prompts=[{"name": "bird", "prompt": "a bird"}])
    result = invoke(
        "generate", "--config", config, "--generator-dir", pipeline_dir,
        "--classes-from", real_set, "--out", tmp_path / "out", "--num", 2, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "generator.text2image.prompts: ['bird'] are not classes of the target" in result.output


# --- studies: any generator kind in sweep.generators ------------------------------------------

TINY_STUDY = {
    "seeds": [0],
    "sio_alpha": 0.75,
    "shard": {"shard_size": 128, "digits": {"far_ood_images_per_set": 40}},
    "generator": {"label": "weak", "model": {"block_out_channels": [8, 16]}, "train": {"steps": 5}},
    "generate": {"num_images": 96, "batch_size": 48, "shard_size": 32},
    "train": {"epochs": 1, "batch_size": 64},
    "evaluate": {"detectors": ["msp"]},
}


def test_a_study_ranks_ddpms_and_a_text_to_image_model(tmp_path, pipeline_dir):
    """A weak DDPM, a longer-trained one and a text-to-image pipeline in one sweep: each is
    generated, measured and audited; only the built-in DDPMs are trained."""
    longer = {**TINY_STUDY["generator"], "label": "longer", "train": {"steps": 10}}
    t2i = section(pipeline_dir, {**SETTINGS, "grey": True})
    study = {**TINY_STUDY, "sweep": {"generators": [longer, {**t2i, "label": "t2i"}]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**study, "output_dir": str(tmp_path / "out")}))
    result = invoke("run", path, "--dry-run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    plan = [line.split(None, 1) for line in result.output.splitlines() if line.startswith("  ")]
    rows = [stage.split("  ")[0].strip() for _, stage in plan]
    for key in ("weak", "longer", "t2i"):
        assert [f"generate {key}", f"fid {key}", f"audit {key}"] == [
            row for row in rows if row.endswith(f" {key}") and not row.startswith("train")
        ]
    assert "train generator weak" in rows and "train generator longer" in rows
    assert "train generator t2i" not in rows
    assert "train t2i-n96-alpha0.75-seed0" in rows


def test_a_synthetic_set_made_before_text2image_existed_is_kept(tmp_path):
    from sio.core.stages import COMPLETE_FILE, STAGE_FILE, stage_verdict
    from sio.generate.config import GenerateConfig
    from sio.generate.stage import generate_stage

    made = generate_stage(GenerateConfig(), GeneratorConfig(), "w" * 64, "c" * 64)
    old = json.loads(json.dumps(made.definition))
    del old["generator"]["text2image"]  # what an older sio recorded
    (tmp_path / STAGE_FILE).write_text(json.dumps(old))
    (tmp_path / COMPLETE_FILE).write_text("{}")
    verdict = stage_verdict(tmp_path, made.definition, False, made.resumable, made.defaults)
    assert verdict.action == "skip", verdict.why
