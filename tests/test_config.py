"""The pipeline config: defaults, error messages, frozenness and the to_dict round trip."""

from __future__ import annotations

import dataclasses
import re

import pytest

from sio.core.config import ConfigError, load_yaml_dataclass, parse_dataclass, to_dict
from sio.pipeline.config import PipelineConfig, load_pipeline
from sio.shards.config import DigitsConfig


def write(tmp_path, text: str, name: str = "pipeline.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path, text: str, name: str = "pipeline.yaml") -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    return message


def test_defaults_parse_and_equal_the_dataclass_defaults():
    cfg = parse_dataclass(PipelineConfig, {}, "")
    assert cfg == PipelineConfig()
    assert cfg.sio_alpha == 0.8
    assert cfg.seeds == (0, 1, 2)
    assert cfg.train.batch_size == 128
    assert cfg.evaluate.fpr_convention == "id"
    assert cfg.shard.digits.id_classes == (0, 1, 2, 3, 4, 5)


def test_empty_file_gives_defaults(tmp_path):
    assert load_pipeline(write(tmp_path, "")) == PipelineConfig()


def test_values_from_file_reach_nested_fields(tmp_path):
    text = """
output_dir: runs/x
seeds: [3, 4]
sio_alpha: 0.5
shard: {seed: 7, digits: {far_ood_images_per_set: 10}}
generator: {sampler: {steps: 5, guidance: 2}}
train: {batch_size: 64, lr: 0.05, hflip: true}
evaluate: {detectors: [msp], fpr_convention: ood}
"""
    cfg = load_pipeline(write(tmp_path, text))
    assert cfg.output_dir == "runs/x"
    assert cfg.seeds == (3, 4)
    assert cfg.sio_alpha == 0.5
    assert cfg.shard.seed == 7
    assert cfg.shard.digits.far_ood_images_per_set == 10
    assert cfg.shard.digits.val_fraction == DigitsConfig().val_fraction
    assert cfg.generator.sampler.steps == 5
    # an int for a float field becomes a float
    assert cfg.generator.sampler.guidance == 2.0
    assert isinstance(cfg.generator.sampler.guidance, float)
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.hflip) == (64, 0.05, True)
    assert cfg.evaluate.detectors == ("msp",)
    assert cfg.evaluate.fpr_convention == "ood"


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "pipe.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_pipeline(path)
    assert str(path) in str(info.value)


def test_malformed_yaml(tmp_path):
    message = load_error(tmp_path, "train: {batch_size: 3\n", "broken.yaml")
    assert "broken.yaml" in message
    assert "not valid YAML" in message


def test_unknown_nested_key_names_field_path_and_file(tmp_path):
    message = load_error(tmp_path, "train: {batch_sise: 3}\n", "mine.yaml")
    assert "mine.yaml" in message
    assert "train.batch_sise" in message
    assert "unknown key" in message
    # the known keys are listed to help the user
    assert "batch_size" in message.split("train.batch_sise", 1)[1]


def test_a_removed_key_names_what_replaced_it(tmp_path):
    """train.shuffle_buffer had no effect once the stream shuffled in passes: a config that
    still sets it is refused by name, with the key that replaced it, not silently accepted."""
    message = load_error(tmp_path, "train: {shuffle_buffer: 500}\n", "old.yaml")
    assert message.startswith(f"{tmp_path / 'old.yaml'}: train.shuffle_buffer: removed;"), message
    assert "train.shuffle_window" in message and "unknown key" not in message


def test_unknown_key_two_levels_deep(tmp_path):
    message = load_error(tmp_path, "shard: {digits: {far_ood: 3}}\n")
    assert "shard.digits.far_ood" in message


def test_unknown_top_level_key(tmp_path):
    message = load_error(tmp_path, "trian: {}\n")
    assert "trian" in message
    assert "unknown key" in message


def test_wrong_type_names_field(tmp_path):
    message = load_error(tmp_path, "train: {batch_size: big}\n")
    assert "train.batch_size" in message
    assert "'big'" in message


def test_list_item_of_wrong_type_names_index(tmp_path):
    message = load_error(tmp_path, "seeds: [0, x]\n")
    assert "seeds[1]" in message
    assert "seeds[0]" not in message


def test_scalar_where_list_expected(tmp_path):
    assert "seeds" in load_error(tmp_path, "seeds: 3\n")


def test_scalar_where_section_expected(tmp_path):
    assert "train" in load_error(tmp_path, "train: 3\n")


@pytest.mark.parametrize("alpha", ["1.5", "-0.1"])
def test_alpha_outside_unit_interval_refused(tmp_path, alpha):
    message = load_error(tmp_path, f"sio_alpha: {alpha}\n")
    assert "sio_alpha" in message


@pytest.mark.parametrize("alpha", [0, 1, 0.0, 1.0, 0.25])
def test_alpha_bounds_accepted(tmp_path, alpha):
    assert load_pipeline(write(tmp_path, f"sio_alpha: {alpha}\n")).sio_alpha == alpha


def test_literal_choice_violation(tmp_path):
    message = load_error(tmp_path, "evaluate: {fpr_convention: both}\n")
    assert "evaluate.fpr_convention" in message
    assert "'both'" in message


def test_literal_choice_accepted(tmp_path):
    cfg = load_pipeline(write(tmp_path, "evaluate: {fpr_convention: ood}\n"))
    assert cfg.evaluate.fpr_convention == "ood"


def test_bool_is_not_an_int(tmp_path):
    assert "train.epochs" in load_error(tmp_path, "train: {epochs: true}\n")


def test_bool_is_not_a_float(tmp_path):
    assert "train.lr" in load_error(tmp_path, "train: {lr: false}\n")


def test_int_is_not_a_bool(tmp_path):
    assert "train.hflip" in load_error(tmp_path, "train: {hflip: 1}\n")


def test_float_is_not_an_int(tmp_path):
    assert "train.batch_size" in load_error(tmp_path, "train: {batch_size: 2.5}\n")


def test_exponent_string_accepted_for_float(tmp_path):
    # PyYAML reads 5e-4 (no dot) as a string
    cfg = load_pipeline(write(tmp_path, "train: {weight_decay: 1e-3, lr: 5e-4}\n"))
    assert cfg.train.lr == 5e-4
    assert cfg.train.weight_decay == 1e-3
    assert isinstance(cfg.train.lr, float)


def test_non_numeric_string_refused_for_float(tmp_path):
    assert "train.lr" in load_error(tmp_path, "train: {lr: fast}\n")


def test_post_init_checks_carry_nested_path(tmp_path):
    message = load_error(tmp_path, "generator: {sampler: {eta: 2}}\n")
    assert "generator.sampler.eta" in message
    message = load_error(tmp_path, "shard: {digits: {id_classes: [0, 1], near_ood_classes: [1]}}")
    assert "shard.digits.near_ood_classes" in message


def test_duplicate_seeds_refused(tmp_path):
    assert "seeds" in load_error(tmp_path, "seeds: [1, 1]\n")


def test_parse_dataclass_error_carries_given_path():
    with pytest.raises(ConfigError, match=r"^\.train\.batch_size: "):
        parse_dataclass(PipelineConfig, {"train": {"batch_size": "x"}}, "")


def test_configs_are_frozen():
    cfg = PipelineConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sio_alpha = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.batch_size = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.shard.digits.far_ood_images_per_set = 3


def test_to_dict_round_trips_defaults():
    cfg = parse_dataclass(PipelineConfig, {}, "")
    data = to_dict(cfg)
    assert data["seeds"] == [0, 1, 2]  # tuples become lists
    assert data["train"]["batch_size"] == 128
    assert parse_dataclass(PipelineConfig, data, "") == cfg


def test_to_dict_round_trips_non_defaults(tmp_path):
    text = (
        "seeds: [5, 9]\nsio_alpha: 0.3\ntrain: {epochs: 2, lr: 5e-4}\n"
        "evaluate: {detectors: [ebo], fpr_convention: ood}\n"
        "generator: {model: {block_out_channels: [8, 16, 32]}}\n"
    )
    cfg = load_pipeline(write(tmp_path, text))
    assert cfg != PipelineConfig()
    again = parse_dataclass(PipelineConfig, to_dict(cfg), "")
    assert again == cfg
    assert again.generator.model.block_out_channels == (8, 16, 32)


# Every name and path is checked when the file is parsed, naming the file and the field, so a
# typo fails before the first stage runs (not after hours of sharding, training, generating).
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("evaluate: {detectors: [msp, mps]}", r"evaluate\.detectors\[1\]: unknown detector 'mps'"),
        ("train: {model: resnet19}", r"train\.model: unknown model 'resnet19'; known: .*small"),
        ("shard: {benchmark: cifar11}", r"shard\.benchmark: unknown benchmark 'cifar11'"),
        ("shard: {benchmark: mine.yaml}", r"shard\.benchmark: mine\.yaml: benchmark file not"),
        ("shard: {benchmark: cifar10}", r"shard\.data_root: benchmark 'cifar10' reads datasets"),
        ("shard: {benchmark: cifar10, data_root: nowhere}", r"shard\.data_root: nowhere: "),
        (
            "shard: {benchmark: cifar10, data_root: .}",
            r"shard\.data_root: cifar-10-batches-py not found \(\S*cifar10\.yaml: id\.train\.path, "
            "set id_train",
        ),
        ("generator: {path: no/such/ddpm}", r"generator\.path: no/such/ddpm not found"),
        (
            "sio_alpha: 0.5\nsweep: {generators: [{label: b, name: stylegan2-ada, path: x.pkl}]}",
            r"sweep\.generators\[0\]\.path: x\.pkl not found \(the stylegan2-ada generator",
        ),
        ("fid: {inception_weights: w.pth}", r"fid\.inception_weights: w\.pth not found"),
        ("train: {method: oe, oe: {outliers: none}}", r"train\.oe\.outliers: none not found"),
        ("train: {method: oe, oe: {outliers: .}}", r"train\.oe\.outliers: \. holds no manifest"),
        ("train: {method: pixmix, pixmix: {mixing: m}}", r"train\.pixmix\.mixing: m not found"),
    ],
)
def test_names_and_paths_checked_at_parse_time(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)  # relative paths are relative to where sio runs
    assert re.search(message, load_error(tmp_path, text)), message


def test_existing_paths_and_urls_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gen").mkdir()
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "outliers").mkdir()
    (tmp_path / "outliers" / "manifest.json").write_text("{}")
    text = (
        "generator: {path: gen}\nshard: {benchmark: cifar10, data_root: .}\n"
        "train: {method: oe, oe: {outliers: outliers}}\n"
    )
    for name in ("cifar-100-python", "mnist", "svhn", "dtd/images", "places365/val_256"):
        (tmp_path / name).mkdir(parents=True)
    assert load_pipeline(write(tmp_path, text)).generator.path == "gen"
    remote = "train: {method: oe, oe: {outliers: 's3://bucket/tin'}}"
    assert load_pipeline(write(tmp_path, remote)).train.oe.outliers == "s3://bucket/tin"


def test_config_literals_are_the_registries():
    """The names a Literal admits at parse time are exactly what the registries hold."""
    import typing

    from sio.generate import GENERATORS
    from sio.generate.config import GeneratorConfig
    from sio.train import METHODS
    from sio.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    assert set(typing.get_args(hints["method"])) == set(METHODS.names())
    generator_names = typing.get_args(typing.get_type_hints(GeneratorConfig)["name"])
    assert set(generator_names) == set(GENERATORS.names())


def test_a_typo_fails_before_any_stage_runs(tmp_path):
    from click.testing import CliRunner

    from sio.cli import get_cli

    out = tmp_path / "out"
    path = write(tmp_path, f"output_dir: {out}\nevaluate: {{detectors: [msp, energy]}}\n")
    result = CliRunner().invoke(get_cli(), ["run", str(path)])
    assert result.exit_code == 1
    assert f"{path}: evaluate.detectors[1]: unknown detector 'energy'" in result.output
    assert not out.exists()  # nothing was sharded, trained or generated


def test_a_missing_required_key_is_named(tmp_path):
    from sio.shards.spec import BenchmarkSpec

    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\nimage_size: 8\nfar: []\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: id: missing; this key has no default"):
        load_yaml_dataclass(BenchmarkSpec, spec)
