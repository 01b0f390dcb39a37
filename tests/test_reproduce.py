"""The main job's pipeline end to end, in its --quick form (a few iterations per stage)."""
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).parents[1]


def test_reproduce_quick(tmp_path):
    r = subprocess.run([sys.executable, "tools/reproduce.py", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for row in ("| FCN-32s |", "| FCN-16s |", "| FCN-8s |", "| FCN-32s, trained on |"):
        assert row in out
    assert "pixel acc. | mean acc. | mean IU | f.w. IU" in out and "skips refine" in out
    summary = json.loads((tmp_path / "results.json").read_text())
    res = summary["results"]
    assert [res[k]["iterations"] for k in ("voc-fcn32s", "voc-fcn16s", "voc-fcn8s", "control")] == [6, 10, 14, 14]
    for k, v in res.items():
        m = v["metrics"]
        assert 0 <= m["mean_iu"] <= 1 and 0 <= m["pixel_acc"] <= 1 and len(m["iu"]) == 6
    for name in ("results.png", "per_class_iu.png"):
        with Image.open(tmp_path / name) as im:
            assert im.width > 200 and im.height > 100
