"""Hostile YAML, through the one loader (``sio.core.config.load_yaml``) every config goes through:
a key given twice, alias bombs, values too big to print, integers beyond a field's bounds, bools
and floats for integers. Each is refused in one line naming the file and the field (or line),
and quickly; the cases that used to hang run in a subprocess with a timeout."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.config import (
    INT_BOUNDS,
    MAX_YAML_NODES,
    SHORT_LENGTH,
    ConfigError,
    load_yaml,
)
from sio.pipeline.config import load_pipeline
from sio.shards.spec import BUILT_IN, load_spec, shipped_benchmarks

ROOT = Path(__file__).resolve().parent.parent
HANG = 60  # seconds after which a case that should take milliseconds counts as a hang

# a small valid benchmark file; tests add to it
BENCHMARK = """\
name: mine
image_size: 8
id:
  train: {name: t, reader: mnist, path: m, part: [train]}
  val: {name: v, reader: mnist, path: m, part: [train]}
  test: {name: s, reader: mnist, path: m, part: [test]}
near: []
far: [{name: f, reader: mnist, path: m, part: [test]}]
"""


def write(tmp_path, text: str, name: str = "pipeline.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, check_paths=False)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and len(message) < len(str(path)) + 300, message
    return message


def bomb(levels: int, width: int) -> str:
    """A flow list whose last item expands to width**levels strings: each anchor is a list of
    ``width`` aliases to the one before (levels=9, width=9: the "billion laughs")."""
    items = [f"&a0 [{', '.join(['lol'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"


def run_python(code: str) -> list:
    """Run ``code`` in a fresh interpreter (a hang cannot take the test run with it); it prints
    one JSON value per line."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


# --- keys given twice -------------------------------------------------------------------------


def test_a_key_given_twice_names_both_lines(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: 3\n  lr: 0.1\n  batch_size: 4\n")
    assert refusal(path) == f"{path}: key 'batch_size' given twice (lines 2 and 4)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seeds: [1]\nsio_alpha: 0.5\nseeds: [2]\n", "key 'seeds' given twice (lines 1 and 3)"),
        ("train: {epochs: 1, epochs: 2}\n", "key 'epochs' given twice (line 1)"),
        ("train: {}\ntrain: {}\n", "key 'train' given twice (lines 1 and 2)"),
        ("shard:\n  digits:\n    id_classes: [0, 1]\n    id_classes: [2, 3]\n", "(lines 3 and 4)"),
    ],
)
def test_a_key_given_twice_anywhere_is_refused(tmp_path, text, message):
    assert message in refusal(write(tmp_path, text))


def test_a_key_given_twice_in_a_benchmark_file(tmp_path):
    path = write(tmp_path, BENCHMARK + "image_size: 16\n", "mine.yaml")
    with pytest.raises(ConfigError) as info:
        load_spec(str(path))
    assert str(info.value) == f"{path}: key 'image_size' given twice (lines 2 and 9)"


def test_anchors_and_merge_keys_still_work(tmp_path):
    text = (
        "generator: &g {sampler: {steps: 7}, label: a}\n"
        "sio_alpha: 0.5\n"
        "sweep:\n  generators:\n    - <<: *g\n      label: b\n"
    )
    config = load_pipeline(write(tmp_path, text), check_paths=False)
    assert [g.key for g in config.generators] == ["a", "b"]  # an explicit key beats a merged one
    assert config.sweep.generators[0].sampler.steps == 7
    for name in shipped_benchmarks():  # the shipped files use anchors for their class lists
        if name not in BUILT_IN:
            assert load_spec(name).name


# --- alias bombs and values too big to print ---------------------------------------------------


def test_an_alias_bomb_is_refused_in_one_line(tmp_path):
    files = {
        "top": write(tmp_path, f"lols: {bomb(9, 9)}\n", "top.yaml"),
        "batch_size": write(tmp_path, f"train: {{batch_size: {bomb(9, 9)}}}\n", "b.yaml"),
        "output_dir": write(tmp_path, f"output_dir: {bomb(9, 9)}\n", "o.yaml"),
        "wide": write(tmp_path, f"seeds: {bomb(2, 1000)}\n", "w.yaml"),
        "itself": write(tmp_path, "seeds: &s [1, *s]\n", "s.yaml"),
    }
    code = f"""
        import json
        from sio.core.config import ConfigError
        from sio.pipeline.config import load_pipeline
        for path in {[str(p) for p in files.values()]!r}:
            try:
                load_pipeline(path, check_paths=False)
                print(json.dumps(None))
            except ConfigError as err:
                print(json.dumps(str(err)))
    """
    messages = dict(zip(files, run_python(code), strict=True))
    for case, message in messages.items():
        path = files[case]
        assert message is not None and message.startswith(f"{path}: "), (case, message)
        assert "\n" not in message and len(message) < len(str(path)) + 200, (case, message)
    for case in ("top", "batch_size", "output_dir", "wide"):
        assert f"aliases expand to over {MAX_YAML_NODES:,} values" in messages[case], case
    assert "line 1: an alias that holds itself" in messages["itself"]


def test_a_bomb_below_the_node_limit_is_shortened_in_the_field_error(tmp_path):
    # 9 levels of 3: under MAX_YAML_NODES nodes, so the file loads; its repr is ~140 kB, and
    # the fields' errors print a shortened one
    assert 3**9 < sum(3**k for k in range(11)) < MAX_YAML_NODES
    cases = {
        "train: {batch_size: %s}": "train.batch_size: expected an integer, got [",
        "output_dir: %s": "output_dir: expected a string, got [",
        "train: {preset: %s}": "train.preset: expected one of ['cifar', 'imagenet'], got [",
        "shard: %s": "shard: expected a mapping of keys to values, got [",
        "seeds: %s": "seeds[0]: expected an integer, got [",
    }
    for text, start in cases.items():
        assert start in refusal(write(tmp_path, text % bomb(9, 3) + "\n")), text


def test_values_built_to_explode_when_printed_are_shortened():
    # shared references: 10**40 strings when expanded; repr() of it would never end
    code = """
        import json
        from sio.core.config import ConfigError, parse_dataclass, short
        from sio.pipeline.config import PipelineConfig
        value = ["lol"]
        for _ in range(40):
            value = [value] * 10
        sections = [
            {"output_dir": value}, {"seeds": value}, {"seeds": [value]}, {"sio_alpha": value},
            {"train": {"batch_size": value}}, {"train": {"preset": value}}, {"shard": value},
            {"evaluate": {"detectors": [value]}}, {"train": {value[0][0][0][0][0][0][0][0][0] and
            "x" * 10**6: 1}}, {"output_dir": {"k" * 10**6: value}}, {"train": {"lr": 10**5000}},
        ]
        for data in sections:
            try:
                parse_dataclass(PipelineConfig, data, "")
                print(json.dumps(None))
            except ConfigError as err:
                print(json.dumps(str(err)))
        print(json.dumps(short(value)))
    """
    *messages, shown = run_python(code)
    for message in messages:
        # (the longest lists a section's known keys: bounded by the schema, not the value)
        assert message is not None and "\n" not in message and len(message) < 800, message
    assert len(shown) <= SHORT_LENGTH
    assert (
        messages[-1]
        == ".train.lr: expected a finite number, got <an integer of about 5001 digits> (int)"
    )


# --- integers ----------------------------------------------------------------------------------


def test_batch_size_two_to_the_63_names_file_and_field(tmp_path):
    path = write(tmp_path, "train: {batch_size: 9223372036854775808}\n")
    assert refusal(path) == (
        f"{path}: train.batch_size: must be in 1..1048576, got 9223372036854775808"
    )


@pytest.mark.parametrize(
    ("text", "field", "bounds"),
    [
        ("train: {epochs: 10000000}", "train.epochs", "1..1000000"),
        ("train: {num_workers: 100000}", "train.num_workers", "0..1024"),
        ("train: {crop_padding: 99999}", "train.crop_padding", "0..4096"),
        ("generate: {batch_size: 1099511627776}", "generate.batch_size", "1..1048576"),
        ("generate: {network_batch: 0}", "generate.network_batch", "1..1048576"),
        ("generator: {sampler: {steps: 100000000}}", "generator.sampler.steps", "1..10000"),
        ("generator: {model: {block_out_channels: [8, 100000]}}", "block_out_channels[1]", ".."),
        ("evaluate: {batch_size: -1}", "evaluate.batch_size", "1..1048576"),
        ("fid: {batch_size: 4294967296}", "fid.batch_size", "1..1048576"),
        # fields without bounds of their own: INT_BOUNDS
        ("seeds: [0, 2147483648]", "seeds[1]", f"{INT_BOUNDS[0]}..{INT_BOUNDS[1]}"),
        ("generate: {num_images: 99999999999}", "generate.num_images", "0..2147483647"),
        ("train: {steps_per_epoch: 18446744073709551616}", "train.steps_per_epoch", ".."),
        ("shard: {seed: -1}", "shard.seed", "0..2147483647"),
    ],
)
def test_integers_beyond_a_fields_bounds_are_refused_by_field(tmp_path, text, field, bounds):
    message = refusal(write(tmp_path, text + "\n"))
    assert f"{field}: must be in " in message and bounds in message, message


def test_a_benchmark_image_size_beyond_bounds(tmp_path):
    path = write(tmp_path, BENCHMARK.replace("image_size: 8", "image_size: 1000000000"), "b.yaml")
    with pytest.raises(ConfigError) as info:
        load_spec(str(path))
    assert str(info.value) == f"{path}: image_size: must be in 1..16384, got 1000000000"


def test_bounds_admit_the_values_in_use(tmp_path):
    text = "train: {batch_size: 1048576, num_workers: 0, cache_limit: 1099511627776}\n"
    config = load_pipeline(write(tmp_path, text), check_paths=False)
    assert (config.train.batch_size, config.train.cache_limit) == (2**20, 2**40)
    for path in [*ROOT.glob("*.yaml"), *ROOT.glob("examples/*.yaml")]:  # the repository's
        assert load_pipeline(path, check_paths=False).train.batch_size >= 1, path


@pytest.mark.parametrize(
    ("text", "field", "got"),
    [
        ("train: {epochs: true}", "train.epochs", "True (bool)"),
        ("seeds: [0, false]", "seeds[1]", "False (bool)"),
        ("train: {batch_size: 1.0e+308}", "train.batch_size", "1e+308 (float)"),
        ("train: {batch_size: 1e308}", "train.batch_size", "'1e308' (str)"),  # YAML 1.1: a str
        ("train: {batch_size: .inf}", "train.batch_size", "inf (float)"),
        ("generate: {num_images: 6000.0}", "generate.num_images", "6000.0 (float)"),
    ],
)
def test_an_integer_field_takes_integers_only(tmp_path, text, field, got):
    message = refusal(write(tmp_path, text + "\n"))
    assert f"{field}: expected an integer, got {got}" in message, message


def test_an_integer_literal_of_thousands_of_digits_is_refused_unread(tmp_path):
    # Python refuses to convert over 4,300 digits (ValueError, a traceback before)
    path = write(tmp_path, "train: {batch_size: %s}\n" % ("9" * 5000))
    assert refusal(path) == f"{path}: line 1: an integer of 5000 characters"


@pytest.mark.parametrize(
    "data",
    [b"train: {batch_size: \xff}\n", b"a: \x00\n", b"train: {batch_size: 3\n", b"a: *nowhere\n"],
)
def test_bytes_that_are_not_yaml_are_one_line(tmp_path, data):
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(data)
    assert "not valid YAML" in refusal(path)


def test_load_yaml_is_the_plain_data(tmp_path):
    path = write(tmp_path, "a: &x [1, 2]\nb: *x\nc: {d: 1.5, e: null}\n", "any.yaml")
    assert load_yaml(path) == {"a": [1, 2], "b": [1, 2], "c": {"d": 1.5, "e": None}}
    assert load_yaml(write(tmp_path, "", "empty.yaml")) is None


# --- every entry point: the CLI commands that read a config -------------------------------------


def entry_points(tmp_path, config, benchmark):
    out = str(tmp_path / "out")
    return {
        "run": ["run", str(config)],
        "train": ["train", "--config", str(config), "--real", "r", "--out", out],
        "generate": ["generate", "--config", str(config), "--out", out],
        "evaluate": ["evaluate", "--config", str(config), "--activations", "a", "--out", out],
        "shard": ["shard", str(benchmark), "--out", out],
    }


@pytest.mark.parametrize(
    ("config_text", "benchmark_text", "message"),
    [
        (
            "train:\n  batch_size: 3\n  batch_size: 4\n",
            BENCHMARK + "name: again\n",
            "given twice (lines",
        ),
        (f"train: {{batch_size: {bomb(9, 9)}}}\n", f"far: {bomb(9, 9)}\n", "a YAML alias bomb"),
        (
            "train: {batch_size: 9223372036854775808}\ngenerate: {batch_size: 9223372036854775808}"
            "\nevaluate: {batch_size: 9223372036854775808}\n",
            BENCHMARK.replace("image_size: 8", "image_size: 9223372036854775808"),
            "must be in 1..",
        ),
    ],
    ids=["key-twice", "alias-bomb", "two-to-the-63"],
)
def test_every_command_that_reads_a_config_refuses_in_one_line(
    tmp_path, monkeypatch, config_text, benchmark_text, message
):
    monkeypatch.chdir(tmp_path)  # no ./pipeline.yaml: `sio shard` reads the defaults
    config = write(tmp_path, config_text, "hostile.yaml")
    benchmark = write(tmp_path, benchmark_text, "bench.yaml")
    for command, arguments in entry_points(tmp_path, config, benchmark).items():
        result = CliRunner().invoke(get_cli(), arguments)
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert result.exit_code == 1, (command, result.output, result.exception)
        assert "Traceback" not in result.output, (command, result.output)
        assert len(errors) == 1, (command, result.output)
        path = benchmark if command == "shard" else config
        assert str(path) in errors[0] and message in errors[0], (command, errors[0])
        assert len(errors[0]) < len(str(path)) * 2 + 300, (command, errors[0])
    assert not (tmp_path / "out").exists()
