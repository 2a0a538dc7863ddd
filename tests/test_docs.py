"""The docs cannot drift: every fenced example in README.md and docs/*.md is run here.

The line before a fence may hold ``<!-- docs-test: KIND (why) -->``:

- ```bash, ``run``: each line is run as a `sio` command in one shared folder, in the order of the
  README's blocks, with a pipeline.yaml there that makes every step tiny (the commands read
  ./pipeline.yaml, so they run exactly as written); ``check``: not run (hours of CPU), the
  `sio run FILE`s it names are parsed; ``skip``: not run (``make``: the install and this suite).
  tests/test_help.py checks every `sio` option of every block, run or not.
- ```python: run in an empty folder; ``fixture=NAME`` first puts the names a block assumes
  (a model, loaders, a benchmark folder) in place, see FIXTURES.
- ```yaml, ``benchmark-file``: parsed and checked as `sio shard my.yaml` checks it (readers,
  fields, paths under a data root holding the folders it names); ``pipeline``: merged into a
  pipeline.yaml and parsed as `sio run` does.
- ```text: output shown, not run.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sio.cli import get_cli

from .tiny_run import write_tiny_run

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?:<!-- docs-test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S
)
KINDS = {
    "bash": {"run", "check", "skip"},
    "python": {"run", "fixture"},
    "yaml": {"benchmark-file", "pipeline"},
    "text": {"run"},
}

# A pipeline.yaml that makes every step of the README walkthrough tiny (seconds, not minutes).
TINY_PIPELINE = """\
output_dir: runs/digits
seeds: [0]
shard:
  shard_size: 128
  digits: {id_classes: [0, 1], near_ood_classes: [2], far_ood_images_per_set: 16}
generator:
  model: {block_out_channels: [8, 16]}
  train: {steps: 2, batch_size: 16, log_every: 1, checkpoint_every: 0}
  sampler: {steps: 1}
generate: {num_images: 1000, batch_size: 250, shard_size: 500}
train: {epochs: 1, batch_size: 64, num_workers: 0}
evaluate: {detectors: [msp, ebo, knn], knn: {k: 5}}
"""


def blocks():
    """(file, line, language, kind, body) of every fenced block."""
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        for match in FENCE.finditer(text):
            marker = (match.group("marker") or "run").split(" (")[0].strip()
            kind = marker.split("=")[0]
            line = text[: match.start("body")].count("\n")
            found.append((path, line, match.group("lang"), marker, kind, match.group("body")))
    return found


BLOCKS = blocks()


def block_id(block) -> str:
    return f"{block[0].name}:{block[1]}"


def commands(body: str) -> list[list[str]]:
    """The `sio` command lines of a shell block, continuations joined, comments dropped."""
    lines = []
    for line in re.sub(r"\\\n\s*", " ", body).splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(shlex.split(line))
    return lines


def test_every_block_has_a_known_kind():
    assert len(BLOCKS) > 8
    for path, line, lang, marker, kind, _ in BLOCKS:
        assert lang in KINDS, f"{path.name}:{line}: a ```{lang} block; use bash, python, yaml, text"
        assert kind in KINDS[lang], f"{path.name}:{line}: ```{lang} marked {marker!r}"
    unrun = [b for b in BLOCKS if b[4] in ("check", "skip")]
    assert len(unrun) <= 3, "unrun blocks are rare: " + ", ".join(map(block_id, unrun))


def sio(args: list[str]) -> str:
    started = time.perf_counter()
    result = CliRunner().invoke(get_cli(), args, catch_exceptions=False)
    print(f"{time.perf_counter() - started:6.1f} s  sio {shlex.join(args)}")  # pytest -s shows it
    assert result.exit_code == 0, f"sio {shlex.join(args)}:\n{result.output}"
    return result.output


def test_the_readme_walkthrough_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    (tmp_path / "pipeline.yaml").write_text(TINY_PIPELINE)
    runs = [b for b in BLOCKS if b[2] == "bash" and b[4] == "run"]
    assert runs and all(b[0].name == "README.md" for b in runs)
    for block in runs:
        for line in commands(block[5]):
            assert line[0] == "sio", f"{block_id(block)}: {line}"
            sio(line[1:])
    assert (tmp_path / "eval" / "report.md").is_file()
    for suffix in ("png", "pdf", "svg"):  # what README and docs/output.md say `sio plot` writes
        assert (tmp_path / "runs" / "base1" / f"log.{suffix}").is_file()
    assert (tmp_path / "gen" / "ddpm.training" / "log.jsonl").is_file()
    assert (tmp_path / "eval" / "sio0-scores" / "score-plots").is_dir()


def test_the_long_runs_name_files_that_parse():
    from sio.pipeline.config import load_pipeline

    checks = [b for b in BLOCKS if b[2] == "bash" and b[4] == "check"]
    files = [
        line[2]
        for block in checks
        for part in commands(block[5])
        for line in [part[: part.index("&&")] if "&&" in part else part]
        if line[:2] == ["sio", "run"] and len(line) > 2
    ]
    assert files
    for name in files:
        load_pipeline(ROOT / name, check_paths=False)


# --- python blocks ----------------------------------------------------------------------------


def notebook_fixture(folder: Path) -> dict:
    """What the one-detector example assumes: a model with ``fc``, a loader, a batch."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = nn.Sequential()
    model.trunk = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
    model.flat = nn.Flatten()
    model.fc = nn.Linear(16, 2)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.arange(40) % 2), batch_size=16)
    return {"model": model.eval(), "id_train_loader": loader, "images": images[:7]}


def evaluator_fixture(folder: Path) -> dict:
    """What the Evaluator example assumes: ``bench`` (a two-class digits benchmark) and an RGB
    model whose last layer is ``fc`` (the grey benchmark's channel is repeated to it)."""
    import torch
    from torch import nn

    write_tiny_run(folder, shard_size=128)
    torch.manual_seed(0)
    model = nn.Sequential()
    model.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
    model.flat = nn.Flatten()
    model.fc = nn.Linear(32, 2)
    return {"model": model.eval()}


FIXTURES = {"notebook": notebook_fixture, "evaluator": evaluator_fixture}
PYTHON = [b for b in BLOCKS if b[2] == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=block_id)
def test_python_example_runs(block, tmp_path, monkeypatch):
    path, line, _, marker, kind, body = block
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    names = {"__name__": "__docs__"}
    if kind == "fixture":
        names.update(FIXTURES[marker.split("=", 1)[1]](tmp_path))
    exec(compile("\n" * line + body, str(path), "exec"), names)


# --- yaml blocks ------------------------------------------------------------------------------


def benchmark_data_root(spec, root: Path) -> None:
    """Folders and list files at every path the benchmark names (their contents are not read)."""
    sources = [*vars(spec.id).values(), *spec.near, *spec.far]
    for source in sources:
        (root / source.path).mkdir(parents=True, exist_ok=True)
        if source.imglist:
            (root / source.imglist).parent.mkdir(parents=True, exist_ok=True)
            (root / source.imglist).write_text("")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b[2] == "yaml"], ids=block_id)
def test_yaml_example_parses(block, tmp_path):
    path, line, _, marker, kind, body = block
    if kind == "pipeline":
        from sio.pipeline.config import load_pipeline

        (tmp_path / "pipeline.yaml").write_text(body)
        load_pipeline(tmp_path / "pipeline.yaml", check_paths=False)
        return
    from sio.shards import check_shard_config
    from sio.shards.config import ShardConfig
    from sio.shards.spec import load_spec

    (tmp_path / "my.yaml").write_text(body)
    spec = load_spec(str(tmp_path / "my.yaml"))
    benchmark_data_root(spec, tmp_path / "data")
    check_shard_config(
        ShardConfig(benchmark=str(tmp_path / "my.yaml"), data_root=str(tmp_path / "data"))
    )


def test_every_relative_link_resolves():
    broken = []
    for path in DOC_FILES:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.name}: {target}")
    assert not broken, broken


def test_the_readme_is_a_map():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", text))
    assert pages <= linked, f"docs pages the README's table does not link: {pages - linked}"
    # the two commands, in this order, and CI runs the second
    assert text.index("make demo") < text.index("make test")
    assert "make test" in (ROOT / ".ci" / "run").read_text()
