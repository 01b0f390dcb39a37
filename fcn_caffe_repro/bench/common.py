"""What the benchmarks (`fcn bench ...`) share: the process's memory as Linux reports it, writing
results, and IEEE float32 on CUDA."""
import json
import os


def status_bytes(field):
    """A /proc/self/status field (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak():
    """Reset VmHWM to the current RSS (Linux clear_refs 5), so a stage's peak is its own; False where
    not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def write_json(path, payload):
    """payload as indented JSON at path, its folder made first."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=1)


def ieee_float32_on_cuda():
    """CUDA float32 as IEEE float32 (TF32 off in matmul and cuDNN): what the CPU paths and Caffe
    compute, so the benchmarks compare the same arithmetic and their agreement checks hold."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
