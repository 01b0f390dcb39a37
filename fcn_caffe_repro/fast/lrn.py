"""FastLRN: Caffe's cross-channel LRN as a sum of shifted channel slices on the NHWC view."""
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NetError


class FastLRN(nn.Module):
    """The same values as the LRN layer's avg_pool3d formulation, without its 5-D pooling. A
    bfloat16 (or float16) input is summed and scaled in float32, the result rounded once."""

    def __init__(self, lrn):
        super().__init__()
        self.lrn = [lrn]  # a list: the layer stays registered on the net only
        self.calls = Counter()

    def extra_repr(self):
        return f"'{self.lrn[0].layer_name}'"

    def forward(self, x):
        m = self.lrn[0]
        if x.dim() != 4:
            raise NetError(f"LRN needs a 4-D bottom, got shape {tuple(x.shape)}", layer=m.layer_name)
        self.calls["nhwc-sum"] += 1
        half = (m.size - 1) // 2
        xt = x.permute(0, 2, 3, 1)  # N H W C: a view when x is channels_last
        if x.dtype in (torch.bfloat16, torch.float16):
            xt = xt.float()
        sq = F.pad(xt * xt, (half, half))
        c = x.shape[1]
        total = sq[..., 0:c]
        for i in range(1, m.size):
            total = total + sq[..., i:i + c]
        scale = (total * (m.alpha / m.size) + m.k).pow(-m.beta)
        return ((xt * scale).to(x.dtype).permute(0, 3, 1, 2),)
