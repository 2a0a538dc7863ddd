"""Help and docs agree: every command's --help has examples, every `sio ...` option that the help
examples, README.md and docs/*.md show exists on that command, `report --help` and the docs
name the same files for --out, and --help or a config mistake answers without importing torch."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from sio.cli import get_cli

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def all_commands():
    """(path, command) for sio and every command and sub-command below it."""

    def walk(command, path, parent):
        yield path, command
        if isinstance(command, click.Group):
            context = click.Context(command, info_name=path[-1], parent=parent)
            for name in command.list_commands(context):
                yield from walk(command.get_command(context, name), (*path, name), context)

    return list(walk(get_cli(), ("sio",), None))


COMMANDS = dict(all_commands())


def examples(command: click.Command) -> list[str]:
    """The command lines under 'Examples:' in a command's help (continuations joined)."""
    text = command.help or ""
    if "Examples:" not in text:
        return []
    block = text.split("Examples:", 1)[1]
    return shell_lines(block)


def shell_lines(text: str) -> list[str]:
    """Lines of shell, comments dropped, backslash continuations joined, then split on && ; |."""
    joined = re.sub(r"\\\\?\n\s*", " ", text)  # a help text writes the backslash doubled
    lines = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("#"):
            continue
        lines.extend(part.strip() for part in re.split(r"&&|;", line) if part.strip())
    return lines


def sio_invocations(line: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """Each `sio ...` in one shell line: the command path and the options it names."""
    found = []
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    for start, token in enumerate(tokens):
        if token != "sio":
            continue
        rest = tokens[start + 1 :]
        path, index = ("sio",), 0
        while index < len(rest):
            word = rest[index]
            if word == "--debug" and path == ("sio",):
                index += 1
                continue
            candidate = (*path, word)
            if candidate in COMMANDS:
                path, index = candidate, index + 1
                continue
            break
        if path == ("sio",) and not any(w.startswith("--") for w in rest[:1]):
            continue  # prose such as "sio is that method", not a command
        options = [
            match.group(1)
            for word in rest[index:]
            if (match := re.match(r"\[?(--[a-z0-9][a-z0-9-]*)", word))
        ]
        found.append((path, options))
    return found


def command_options(command: click.Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return names


def doc_command_lines() -> list[tuple[str, str]]:
    """(where, shell line) for every fenced shell block and every inline `sio ...` code span."""
    lines = []
    for path in DOC_FILES:
        text = path.read_text()
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S):
            lines.extend((path.name, line) for line in shell_lines(block))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`\n]*\bsio [^`\n]*)`", prose):
            lines.extend((path.name, line) for line in shell_lines(span))
    return lines


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_help_has_an_example_that_names_real_options(path):
    command = COMMANDS[path]
    lines = examples(command)
    assert lines, f"`{' '.join(path)} --help` has no Examples: section"
    assert any(" ".join(path) in line for line in lines) or path == ("sio",), (
        f"`{' '.join(path)} --help`'s examples never run {' '.join(path)}"
    )
    for line in lines:
        for used, options in sio_invocations(line):
            unknown = set(options) - command_options(COMMANDS[used])
            assert not unknown, f"`{' '.join(path)} --help` example {line!r}: {sorted(unknown)}"


def test_every_sio_option_the_docs_show_exists():
    checked = 0
    problems = []
    for where, line in doc_command_lines():
        for used, options in sio_invocations(line):
            checked += 1
            unknown = set(options) - command_options(COMMANDS[used])
            if unknown:
                problems.append(f"{where}: {line!r}: {' '.join(used)} has no {sorted(unknown)}")
    assert checked > 50  # the docs do show commands
    assert not problems, "\n".join(problems)


def test_the_option_check_catches_an_option_a_command_lacks():
    (used, options), *_ = sio_invocations("sio train --real x --epochz 3 --out y")
    assert used == ("sio", "train")
    assert set(options) - command_options(COMMANDS[used]) == {"--epochz"}
    (used, options), *_ = sio_invocations("sio shards subset a b --num 3")
    assert used == ("sio", "shards", "subset") and options == ["--num"]


def report_out_files(text: str) -> set[str]:
    return set(re.findall(r"\b(?:report|openood)\.(?:md|json|csv|tex|pdf|svg|png)\b", text))


def test_report_help_and_docs_name_the_same_files_for_out():
    command = COMMANDS[("sio", "report")]
    out = next(p for p in command.params if p.name == "out")
    in_option = report_out_files(out.help)
    in_text = re.search(r"--out writes (.*?)\(", " ".join(command.help.split()))
    assert in_text, "`sio report --help` no longer says what --out writes"
    docs = (ROOT / "docs" / "evaluate.md").read_text()
    sentence = re.search(r"`--out` writes (.*?)(?:\.\s|;)", docs, re.S)
    assert sentence, "docs/evaluate.md no longer says what `sio report --out` writes"
    assert in_option
    assert in_option == report_out_files(in_text.group(1)) == report_out_files(sentence.group(1))


HEAVY = ("torch", "torchvision", "diffusers", "sklearn", "scipy", "matplotlib")


def imported_heavy(args: list[str], cwd: Path) -> tuple[list[str], str]:
    """Run `sio ARGS` in a fresh interpreter; the heavy modules it imported, and its output."""
    code = (
        "import sys\n"
        "from sio.cli import get_cli\n"
        "try:\n"
        f"    get_cli()(args={args!r}, prog_name='sio')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    heavy = [line for line in done.stderr.splitlines() if line.startswith("HEAVY")]
    assert heavy, done.stderr
    return eval(heavy[-1][len("HEAVY ") :]), done.stdout + done.stderr


FAST_HELP = [[*path[1:], "--help"] for path in sorted(COMMANDS)]  # every command


@pytest.mark.parametrize("args", FAST_HELP, ids=" ".join)
def test_help_imports_no_heavy_module(args, tmp_path):
    heavy, output = imported_heavy(args, tmp_path)
    assert "Usage: sio" in output
    assert heavy == [], f"sio {' '.join(args)} imported {heavy}"


CONFIG_MISTAKE = [
    ["evaluate", "--run", "r", "--benchmark", "b", "--out", "o", "--config", "bad.yaml"],
    ["train", "--real", "r", "--out", "o", "--config", "bad.yaml"],
    ["shard", "digits", "--out", "o", "--config", "bad.yaml"],
    ["generate", "--generator-dir", "g", "--out", "o", "--config", "bad.yaml"],
    ["serve", "g", "--port", "0", "--config", "bad.yaml"],
    ["fid", "s", "--real", "r", "--config", "bad.yaml"],
    ["run", "bad.yaml"],
]


@pytest.mark.parametrize("args", CONFIG_MISTAKE, ids=lambda a: a[0])
def test_a_config_mistake_answers_before_torch_is_imported(args, tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  batch_size: big\n")
    heavy, output = imported_heavy(args, tmp_path)
    assert "bad.yaml: train.batch_size: expected an integer, got 'big'" in output
    assert "torch" not in heavy, f"sio {args[0]} imported {heavy} before the config error"
