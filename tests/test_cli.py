"""Bad input on the command line: one clear line naming the problem, exit status 2, no stack trace."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kdet(*args):
    return subprocess.run([sys.executable, "-m", "kdet.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["train", "--config", "configs/nope.yaml"], "configs/nope.yaml: config file not found"),
    (["train", "--config", "configs/classloc_shapes.yaml", "--set", "train.epoch=1"],
     "unknown config key 'train.epoch'; valid keys of train: epochs"),
    (["evaluate", "--config", "configs/classloc_shapes.yaml", "--set", "train.output_dir=/nonexistent/run"],
     "/nonexistent/run/last.weights.h5: no checkpoint found"),
    (["data", "check", "--format", "voc", "--path", "/nonexistent/VOC"], "/nonexistent/VOC"),
    (["benchmark", "/nonexistent/model.tflite"], "/nonexistent/model.tflite: no such artifact"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = _kdet(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("kdet: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_data_check_reports_the_two_zero_area_bccd_boxes(shared_data):
    result = _kdet("data", "check", "--format", "voc", "--path", str(shared_data / "bccd" / "BCCD"), "--split",
                   "trainval")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "BloodImage_00338.xml" in result.stdout and "BloodImage_00343.xml" in result.stdout
    assert "RBC" in result.stdout and "Platelets" in result.stdout
