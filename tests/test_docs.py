"""The docs describe the commands as they are: every `kdet ...` command line in README.md and docs/*.md parses with
the real CLI parser (each flag exists, each choice is valid, each config file exists), and the ones that run on
CPU in seconds (`kdet data ...`, `kdet --version`) run and exit 0.

Doc notation is read as a reader would: `[...]` is optional (dropped), `a|b|c` means one of them (the first is
used), placeholders (configs/X.yaml, DIR, IMAGE..., NAME) are filled in, and `# ...` is a comment.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kdet.cli import _DELEGATED, _parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PLACEHOLDERS = {"configs/X.yaml": "configs/classloc_shapes.yaml", "IMAGE...": "image.png", "DIR": "out_dir",
                "NAME": "classloc_shapes", "FILE": "proposals.json", "boxes.json": "proposals.json"}


def _command_lines():
    """(doc name, line number, command text) of every kdet command shown in a code block or indented example."""
    for doc in DOCS:
        in_block = False
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.strip().startswith("```"):
                in_block = not in_block
                continue
            text = line.strip()
            if (in_block or line.startswith("    ")) and text.startswith("kdet "):
                yield doc.name, number, text


def _normalise(text):
    text = re.split(r"\s+#", text)[0]                   # comment
    while re.search(r"\[[^\[\]]*\]", text):
        text = re.sub(r"\s*\[[^\[\]]*\]", "", text)     # optional parts, innermost first
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    text = re.sub(r"(\S+?)\|\S+", lambda m: m.group(1), text)  # a|b|c -> a
    return shlex.split(text)


COMMANDS = list(_command_lines())


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20
    assert {"train", "evaluate", "predict", "export", "data", "serve"} <= {c[2].split()[1] for c in COMMANDS}


def _delegated(argv):
    return next((prefix for prefix in _DELEGATED if tuple(argv[:len(prefix)]) == prefix), None)


def _help(prefix):
    run = subprocess.run([sys.executable, "-m", "kdet.cli", *prefix, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


@pytest.mark.parametrize("doc, number, text", COMMANDS, ids=[f"{d}:{n}" for d, n, _ in COMMANDS])
def test_documented_command_parses(doc, number, text):
    argv = _normalise(text)[1:]
    prefix = _delegated(argv)
    if prefix is not None:  # a command with its own parser (kdet serve, kdet data anchors): its --help lists the flags
        usage = _help(prefix)
        for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
            assert flag in usage, f"{doc}:{number}: `{text}` uses {flag}, which `kdet {' '.join(prefix)}` lacks"
        return
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        if exit_.code == 0:  # --version / --help print and exit 0
            return
        pytest.fail(f"{doc}:{number}: `{text}` does not parse with kdet's CLI (argv {argv})")
    config = getattr(args, "config", None)
    if config:
        assert (REPO / config).is_file(), f"{doc}:{number}: config {config} does not exist"


# README "Using your own data" works on a my_dataset folder the user has: tests/test_own_data.py makes one and runs
# those commands there.
CHEAP = [c for c in COMMANDS if c[2].split()[1] == "data" and c[2].split()[2] in ("check", "convert", "anchors")
         and "my_dataset" not in c[2]]


@pytest.mark.parametrize("doc, number, text", CHEAP, ids=[f"{d}:{n}" for d, n, _ in CHEAP])
def test_documented_data_command_runs(doc, number, text, tmp_path):
    argv = [a.replace("out_dir", str(tmp_path / "out")).replace("/tmp/", f"{tmp_path}/") for a in _normalise(text)]
    run = subprocess.run([sys.executable, "-m", "kdet.cli", *argv[1:]], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"{doc}:{number}: `{text}` failed:\n{run.stderr[-2000:]}"


def test_version():
    run = subprocess.run([sys.executable, "-m", "kdet.cli", "--version"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    import kdet
    assert run.returncode == 0 and run.stdout.strip() == f"kdet {kdet.__version__}"
