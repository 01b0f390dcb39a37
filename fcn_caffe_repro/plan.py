"""A net's execution plan: the steps forward() runs, and after which step each blob is freed.

A step is one layer's module or a group of layers run as one module (the passes in fusion.py and
fast/ rewrite the layer steps into such groups). This module knows steps and blobs only.
"""
from typing import NamedTuple

from torch import nn


class Step(NamedTuple):
    """One unit of forward(): a layer's module, or a fused group, with the blobs it reads and writes."""
    name: str
    bottom: list
    top: list
    module: nn.Module


def layer_steps(net):
    """One step per layer of `net` (a CaffeNet), in prototxt order: the plan every pass starts from."""
    return [Step(spec.name, spec.bottom, spec.top, net.layer(spec.name)) for spec in net.spec.layers]


def with_frees(steps, keep):
    """[(step, blobs to free after it)]: each blob after the step that reads it last, unless it is
    in `keep` (the net's outputs) or that step writes it, so a forward holds only live blobs."""
    last = {}
    for i, step in enumerate(steps):
        for b in step.bottom:
            last[b] = i
    frees = [[] for _ in steps]
    for blob, i in last.items():
        if blob not in keep and blob not in steps[i].top:
            frees[i].append(blob)
    return [(step, tuple(f)) for step, f in zip(steps, frees)]


def readers_of(steps, blob, start):
    """Indices of the steps from `start` on that read `blob` before a step writes it again."""
    out = []
    for i in range(start, len(steps)):
        if blob in steps[i].bottom:
            out.append(i)
        if blob in steps[i].top:
            break
    return out
