// The CUDA kernel bodies of deconv_crop_sum and its backward, and the launch geometry they assume.
//
// One definition read by two compilers: nvcc (deconv_crop_sum.cu launches these on the GPU) and the
// host compiler (csrc/emulated/, which runs them on the CPU under an emulated launch so the tests
// execute every kernel body without a GPU).  FCN_GLOBAL, FCN_SHARED_ARRAY and FCN_SYNCTHREADS are
// the only spellings that differ; blockIdx, threadIdx, blockDim and gridDim are CUDA's built-ins on
// the device and the emulation's per-thread variables on the host.
//
// One thread per output element (forward) or per input element (grad x), one block per weight
// element (grad weight); the arithmetic is fcn_ops.h's, the same the CPU kernels use.  Half and
// bfloat16 accumulate in float (at::opmath_type).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "../deconv_crop_sum.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FCN_GLOBAL __global__
#define FCN_SHARED_ARRAY(type, name, n) __shared__ type name[n]
#define FCN_SYNCTHREADS() __syncthreads()
#else
// The host build must have included the emulation first (csrc/emulated/launch.h), which defines
// these macros and the index variables.
#ifndef FCN_EMULATED_LAUNCH
#error "kernels.cuh on the host needs csrc/emulated/launch.h included before it"
#endif
#endif

namespace fcn {

// Threads per block of every launch; grad_weight_kernel's reduction needs a power of two.
constexpr int kThreads = 256;
// The most blocks of one grid; larger calls wrap in the grid-stride loops.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

inline int64_t blocks_for(int64_t total, int64_t threads = kThreads, int64_t max_blocks = kMaxBlocks) {
  return std::max<int64_t>(1, std::min<int64_t>((total + threads - 1) / threads, max_blocks));
}

// The largest element offset a strided tensor reaches.
inline int64_t max_offset(const at::Tensor& t) {
  int64_t m = 0;
  for (int64_t d = 0; d < t.dim(); ++d) m += (t.size(d) - 1) * t.stride(d);
  return m;
}

template <typename I>
struct SkipView {
  I s0, s1, s2, s3;  // element strides of skip
  I oh, ow;          // skip_offset
};

template <typename I>
SkipView<I> skip_view(const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset) {
  if (!skip.has_value()) return {0, 0, 0, 0, 0, 0};
  return {I(skip->stride(0)), I(skip->stride(1)), I(skip->stride(2)), I(skip->stride(3)),
          I(skip_offset[0]), I(skip_offset[1])};
}

// True when the forward's indices, the skip view's included, all fit 32 bits.
inline bool forward_fits_int32(const Geometry& g, const std::optional<at::Tensor>& skip) {
  return fits_int32(g) && (!skip.has_value() || max_offset(*skip) < (int64_t(1) << 30));
}

// The (n, c, y, x) of a flat index into a contiguous N×C×H×W tensor.
template <typename I>
struct NCHW {
  I n, c, y, x;
};

template <typename I>
FCN_HOST_DEVICE NCHW<I> unravel_nchw(I idx, I C, I H, I W) {
  const I x = idx % W;
  I t = idx / W;
  const I y = t % H;
  t /= H;
  return {t / C, t % C, y, x};
}

template <typename T, typename I>
FCN_GLOBAL void forward_kernel(Geometry g, const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ skip, SkipView<I> sv, T* __restrict__ out,
                               I total) {
  using acc_t = at::opmath_type<T>;
  const I H = I(g.H), W = I(g.W), C_out = I(g.C_out);
  const I x_sample = I(g.C_in) * I(g.Hi) * I(g.Wi);
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += I(gridDim.x) * blockDim.x) {
    const NCHW<I> o = unravel_nchw<I>(idx, C_out, H, W);
    acc_t acc = forward_point<acc_t, T, I>(x + o.n * x_sample, w, g, o.c, o.y, o.x);
    if (skip != nullptr)
      acc += static_cast<acc_t>(skip[o.n * sv.s0 + o.c * sv.s1 + (o.y + sv.oh) * sv.s2 + (o.x + sv.ow) * sv.s3]);
    out[idx] = static_cast<T>(acc);
  }
}

template <typename T, typename I>
FCN_GLOBAL void grad_input_kernel(Geometry g, const T* __restrict__ grad, const T* __restrict__ w,
                                  T* __restrict__ gx, I total) {
  using acc_t = at::opmath_type<T>;
  const I Hi = I(g.Hi), Wi = I(g.Wi), C_in = I(g.C_in);
  const I grad_sample = I(g.C_out) * I(g.H) * I(g.W);
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += I(gridDim.x) * blockDim.x) {
    const NCHW<I> i = unravel_nchw<I>(idx, C_in, Hi, Wi);
    gx[idx] = static_cast<T>(grad_input_point<acc_t, T, I>(grad + i.n * grad_sample, w, g, i.c, i.y, i.x));
  }
}

// One block per weight element (ci, cog, ky, kx); threads split the (n, iy) rows, then a tree
// reduction in shared memory.  blockDim.x must be a power of two, at most kThreads.
template <typename T, typename I>
FCN_GLOBAL void grad_weight_kernel(Geometry g, const T* __restrict__ x, const T* __restrict__ grad,
                                   T* __restrict__ gw) {
  using acc_t = at::opmath_type<T>;
  FCN_SHARED_ARRAY(acc_t, partial, kThreads);
  const I kh = I(g.kh), kw = I(g.kw), cout_g = I(g.cout_g);
  const I widx = I(blockIdx.x);
  const I kx = widx % kw, ky = (widx / kw) % kh, cog = (widx / (kw * kh)) % cout_g;
  const I ci = widx / (kw * kh * cout_g);
  const I co = (ci / I(g.cin_g)) * cout_g + cog;
  const Span<I> rows = inputs_with_tap_inside<I>(ky, I(g.sh), I(g.oh), I(g.oh) + I(g.H), I(g.Hi));
  const I nrows = rows.end - rows.begin;
  acc_t acc = acc_t(0);
  for (I r = threadIdx.x; r < I(g.N) * nrows; r += blockDim.x) {
    const I n = r / nrows, iy = rows.begin + r % nrows;
    const T* xr = x + ((n * I(g.C_in) + ci) * I(g.Hi) + iy) * I(g.Wi);
    const T* gr = grad + ((n * I(g.C_out) + co) * I(g.H) + iy * I(g.sh) + ky - I(g.oh)) * I(g.W);
    acc += grad_weight_row<acc_t, T, I>(xr, gr, g, kx);
  }
  partial[threadIdx.x] = acc;
  FCN_SYNCTHREADS();
  for (int half = int(blockDim.x) / 2; half > 0; half >>= 1) {
    if (int(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    FCN_SYNCTHREADS();
  }
  if (threadIdx.x == 0) gw[widx] = static_cast<T>(partial[0]);
}

}  // namespace fcn
