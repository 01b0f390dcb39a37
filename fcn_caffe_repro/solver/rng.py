"""The global random generators (torch CPU and CUDA, numpy, Python): seeding, capture, restore."""
import random

import numpy as np
import torch

from ..distributed import rank_and_world


def seed_everything(seed, rank=None):
    """Seed torch (CPU and CUDA), numpy's and Python's global generators with seed + rank, as
    Caffe seeds solver k with random_seed + k. `rank` defaults to this process's rank under
    torch.distributed (0 outside it); rank=0 seeds with `seed` itself."""
    if rank is None:
        rank = rank_and_world()[0]
    seed = seed + rank
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state():
    """The global RNG states: torch CPU (and CUDA when initialised), numpy, Python."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what rng_state returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

