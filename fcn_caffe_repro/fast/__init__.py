"""Fast inference mode: a CaffeNet's plan rewritten to run a CPU forward near the matmul roofline.

    net.optimize()                    # in place, returns the net; fast.optimize(net) is the same
    net.optimize(dtype=torch.bfloat16)  # bfloat16 activations, float32 scores, inference only
    fast.for_inference(net, "bf16")   # by name, "fast" / "bf16" / "plain" (fcn eval/infer --mode)
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
- Winograd F(2x2, 3x3) (winograd.py): "auto" takes it in float32 for 3x3 stride-1 layers with
  256 or more input channels (VGG's conv3_2 to conv5_3), 16 products per 2x2 tile instead of 36
  as batched GEMMs between two transforms (csrc/cpu/winograd.cpp), into a shared workspace;
- Deconvolution -> Crop (-> Eltwise SUM) through the fused op (fusion.py), skip="ext";
- LRN across channels (AlexNet) as a windowed sum on the NHWC view (lrn.py);
- a net whose first convolution pads past its window (FCN's conv1_1, pad 100) runs its first
  layers on maps without most of that constant border (border.py, as in training): full-width
  FCN-8s at 500 x 500 3.48 -> 2.89 s on one AMD EPYC thread, the same scores;
- blobs freed after their last reader, as CaffeNet.forward does whenever return_blobs is off.
Every other layer runs its own module on whatever layout it gets. Results agree with Caffe's
blobs to the tolerances of the parity tests (only summation order differs).

bfloat16 (dtype=torch.bfloat16, precision.py): the parameters stay float32; each convolution and
fused step converts its weights once (again when they change) and runs on bfloat16 activations,
oneDNN and the fused op summing in float32 and rounding each output once; the steps that write
the scores compute in float32, so scores come back float32 (other blobs, with return_blobs=True,
are bfloat16); layers with other arithmetic run in float32 on widened inputs. On a CPU where oneDNN has no bfloat16 (no AVX512-BF16, AMX or
AVX-NE-CONVERT; torch honours ONEDNN_MAX_CPU_ISA) conv="auto" takes F.conv2d in bfloat16, which
works and is slower than float32. Cost, measured (tests/test_fast.py, `fcn bench net`): scores
within 2^-5 of the largest score of float32's on the caffe-ref nets; see the README for argmax
agreement and mean IU.

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
from .installed import buffer_stats, calls, describe, release_buffers, repack, step_dtype, step_path
from .lrn import FastLRN
from .pool import BufferPool
from .precision import DTYPES
from .rewrite import CONV_IMPLS, MEMORY_FORMATS, MODES, SKIP_IMPLS, TRAIN_MODES, for_inference, optimize

__all__ = ["optimize", "for_inference", "describe", "calls", "step_path", "step_dtype", "buffer_stats",
           "release_buffers", "repack", "BufferPool", "FastConv", "FastLRN", "auto_impl", "CONV_IMPLS", "SKIP_IMPLS",
           "MEMORY_FORMATS", "TRAIN_MODES", "MODES", "DTYPES"]
