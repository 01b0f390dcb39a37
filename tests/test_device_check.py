"""tools/device_check.sh, the one script of GPU checks, runs here in its dry mode (no GPU): so it
cannot rot between the rare sessions that have a GPU.  Narrowed (DEVICE_CHECK_DRY=collect) to a
syntax check and collecting the emulated kernel tests, which the suite runs anyway."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run its real checks")
def test_device_check_dry_run():
    env = dict(os.environ, DEVICE_CHECK_DRY="collect", PYTHON=sys.executable)
    res = subprocess.run(["bash", str(ROOT / "tools" / "device_check.sh")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no CUDA GPU" in res.stdout or "has no CUDA" in res.stdout
    assert "tests collected" in res.stdout and "dry run passed" in res.stdout, res.stdout
