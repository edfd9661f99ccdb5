"""The `kdet` command is quiet by default: no TensorFlow banner lines (oneDNN, CUDA) on stderr; --verbose shows
them again (where TensorFlow prints any)."""
import shutil
import subprocess

import pytest

import kdet


@pytest.mark.skipif(shutil.which("kdet") is None, reason="the kdet console script is installed by pip install -e .")
def test_kdet_prints_no_tensorflow_banners_without_verbose(tmp_path):
    quiet = subprocess.run(["kdet", "--version"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout.strip() == f"kdet {kdet.__version__}"
    assert quiet.stderr == ""
    loud = subprocess.run(["kdet", "--verbose", "--version"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert loud.returncode == 0 and loud.stdout.strip() == f"kdet {kdet.__version__}"
    # TensorFlow 2.21 on an x86 CPU announces its oneDNN kernels at import (what the default hides).
    assert "oneDNN" in loud.stderr
