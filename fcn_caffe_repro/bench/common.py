"""What the benchmarks (`fcn bench ...`) share: the process's memory as Linux reports it, and writing results."""
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
