"""The base install trains and evaluates; export / serving packages are extras named in one-line errors."""
import subprocess
import sys
from pathlib import Path

import setuptools.config.setupcfg as setupcfg

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("grpc", "tensorflow_serving", "onnx", "onnxruntime", "tf2onnx", "ai_edge_litert")


def _without_extras(code):
    """Run `code` in a fresh interpreter where the optional packages cannot be imported."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in OPTIONAL)
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_base_requirements_leave_export_and_serving_to_extras():
    options = setupcfg.read_configuration(ROOT / "setup.cfg")["options"]
    base = " ".join(options["install_requires"])
    for package in ("onnx", "tf2onnx", "onnxruntime", "ai-edge-litert", "tensorflow-serving-api", "grpcio"):
        assert package not in base
    extras = options["extras_require"]
    assert set(extras["all"]) == set(extras["export"]) | set(extras["serve"])
    assert set(extras["all"]) <= set(extras["test"])


def test_training_imports_without_extras_and_missing_extras_are_named():
    result = _without_extras(
        "import kdet, kdet.api, kdet.cli, kdet.main_job, kdet.training.run, kdet.eval, kdet.inference.predict\n"
        "from kdet.errors import MissingExtraError\n"
        "from kdet.inference.runners import OnnxRunner, TFLiteRunner\n"
        "for runner in (OnnxRunner, TFLiteRunner):\n"
        "    try:\n"
        "        runner('model.file')\n"
        "    except MissingExtraError as error:\n"
        "        print(error)\n"
        "print('serve exit', kdet.cli.main(['serve', '--help']))\n")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "Running an ONNX model needs the Python package 'onnxruntime', which is not installed: " \
           "pip install \"kdet[export]\" (or kdet[all])" in lines
    assert any(line.startswith("Running a TFLite model needs the Python package 'ai_edge_litert'") for line in lines)
    assert "serve exit 2" in lines
    assert "kdet serve needs the Python package 'grpc', which is not installed: pip install \"kdet[serve]\"" \
           in result.stderr
