"""Fast inference mode: a CaffeNet's plan rewritten to run a CPU forward near the matmul roofline.

    net.optimize()                    # in place, returns the net; fast.optimize(net) is the same
    with torch.no_grad():
        scores = net(data=image)
    fast.describe(net)                # every step and the path it takes; fast.calls(net) counts them

The rewrite (rewrite.py; tools/bench_net.py measures it against the plain path):
- every Convolution and the in-place ReLU after it become one step (conv.py);
- conv="mkldnn" (onednn.py): oneDNN's convolution with the ReLU as a post-op, weights reordered
  once into oneDNN's blocked layout, activations in channels_last, written into output buffers
  the steps share and reuse (pool.py: no page faults);
- conv="gemm" (gemm.py): im2col and one GEMM against a view of the weight. "auto" takes it for
  fc-like layers (VGG's fc6: a 7x7x512 reduction on a small output), where oneDNN's direct kernel
  runs well below the GEMM rate;
- Deconvolution -> Crop (-> Eltwise SUM) through the fused op (fusion.py), skip="ext";
- LRN across channels (AlexNet) as a windowed sum on the NHWC view (lrn.py);
- blobs freed after their last reader, as CaffeNet.forward does whenever return_blobs is off.
Every other layer runs its own module on whatever layout it gets. Results agree with Caffe's
blobs to the tolerances of the parity tests (only summation order differs).

Training: the steps are an inference path. When autograd records (grad enabled and the input or
a parameter requires grad) a convolution step runs F.conv2d and the ReLU (path "autograd"), the
same arithmetic as the fused plan, so forward+backward works and is counted; train="error"
raises instead. Weights: a prepacked copy is keyed on the parameter's storage and version
counter, so any change made through PyTorch (load_caffemodel, load_state_dict, an optimizer
step, p.copy_) re-packs it on the next forward; writes through `p.data` bypass the version
counter (PyTorch semantics): call repack(net) after those. Nothing falls back silently: an
asked-for path that is unavailable raises, at optimize() or at the forward that would need it;
so does a torch that lacks a private API the path needs (torch_private.py).
"""
from .conv import FastConv, auto_impl
from .installed import buffer_stats, calls, describe, release_buffers, repack, step_path
from .lrn import FastLRN
from .pool import BufferPool
from .rewrite import CONV_IMPLS, MEMORY_FORMATS, SKIP_IMPLS, TRAIN_MODES, optimize

__all__ = ["optimize", "describe", "calls", "step_path", "buffer_stats", "release_buffers", "repack",
           "BufferPool", "FastConv", "FastLRN", "auto_impl", "CONV_IMPLS", "SKIP_IMPLS", "MEMORY_FORMATS",
           "TRAIN_MODES"]
