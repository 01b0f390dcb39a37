"""The step arena (csrc/cpu/step_arena.cpp): the large CPU blocks of a training step placed in one
region by a plan recorded from an earlier step, so that steps neither fragment the heap nor fault
pages in.

    step_arena.install()        # once per process: the CPU allocator from then on
    with step_arena.step():     # around each training step (SGDSolver.step does this)
        ...
    step_arena.stats()          # the plan, and what the last step got from it

The first step runs unplanned, the second is recorded (each block of at least 1 MiB: its size, and
when it was requested and freed), and from the third on each request gets the place the plan gave
the request at its position, if the size matches and nothing alive is there; anything else is
mapped on its own for the rest of that step, and two such steps in a row record a new plan (another
input size). Full-width FCN-32s at 500x500 (tools/bench_train.py, README): peak RSS 2.53 GB, against
3.21 GB on glibc's kept heap alone, which fragments; steps from the fourth on fault no pages.
"""
import contextlib

import torch

from . import ops

__all__ = ["install", "step", "stats"]


def install():
    """Make the step arena the process's CPU allocator (once per process; later calls do nothing).
    Blocks allocated before keep their allocator. Needs the C++ extension."""
    if not ops.extension_available():
        raise RuntimeError(ops.extension_problem())
    torch.ops.fcn_caffe_repro.install_step_arena()


@contextlib.contextmanager
def step():
    """The extent of one training step: its large blocks are recorded or placed by the plan."""
    torch.ops.fcn_caffe_repro.step_arena_begin()
    try:
        yield
    finally:
        torch.ops.fcn_caffe_repro.step_arena_end()


def stats():
    """{planned_blocks, planned_bytes, region_bytes, served, mapped, recordings, diverged}: the
    plan's blocks, their bytes and the region they are packed into; the last step's blocks served
    from the region and mapped on their own; how many steps were recorded; whether the last step
    left the plan."""
    names = ("planned_blocks", "planned_bytes", "region_bytes", "served", "mapped", "recordings", "diverged")
    values = torch.ops.fcn_caffe_repro.step_arena_stats()
    return {**dict(zip(names, values)), "diverged": bool(values[-1])}
