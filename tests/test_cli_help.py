"""`kdet --help` describes every command and option, and `kdet --version` prints the package's version."""
import argparse
import os
import subprocess
import sys

import pytest

import kdet
from kdet.cli import _parser, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["train", "evaluate", "predict", "export", "benchmark", "run", "serve", "convert", "convert torchvision", "data", "data anchors",
            "data check", "data convert", "data show", "data split"]
DELEGATED = ["serve", "data anchors"]  # parsed by kdet.serving.core / kdet.data.anchors_kmeans, not by kdet.cli


def _parsers(parser, name="kdet"):
    """(command line, parser) for the parser and every subcommand under it, depth first."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield from _parsers(subparser, f"{name} {command}")


def _without_help(parser):
    """Every option, positional and subcommand of `parser` and its subcommands that has no help text."""
    missing = []
    for name, p in _parsers(parser):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                described = {choice.dest for choice in action._choices_actions if choice.help}
                missing += [f"{name} {command}" for command in action.choices if command not in described]
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_and_option_has_help():
    parser = _parser()
    assert [name for name, _ in _parsers(parser)] == ["kdet"] + [f"kdet {c}" for c in COMMANDS]
    assert _without_help(parser) == []
    assert all(p.description for _, p in _parsers(parser))  # `kdet train --help` says what the command does


def test_the_help_check_finds_a_bare_option():
    parser = argparse.ArgumentParser(prog="kdet")
    sub = parser.add_subparsers(dest="command", help="commands")
    p = sub.add_parser("train", help="train")
    p.add_argument("--epochs")
    sub.add_parser("nohelp")
    assert _without_help(parser) == ["kdet nohelp", "kdet train --epochs"]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: kdet {command}")
    if command not in ("data", "benchmark", "convert", "convert torchvision", *DELEGATED):
        assert "--config FILE" in out


def test_version_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "kdet.cli", "--version"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == f"kdet {kdet.__version__}\n"
    assert kdet.__version__.count(".") == 2
