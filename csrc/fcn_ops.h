// Per-element arithmetic of deconv_crop_sum, shared by the CPU and CUDA kernels.
//
// Notation: a transposed convolution with stride s and kernel k maps input index i to the
// output indices i*s + t of the uncropped ("full") output, t = 0..k-1 the kernel tap.  The crop
// keeps the full-output window [lo, lo + n).  Every function here is plain index arithmetic or a
// short accumulation loop, compiled for the host (CPU kernels, tested by the CPU tests) and for
// the device (CUDA kernels) from this one definition.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FCN_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined: the CPU kernels call these from ISA-specific (AVX2/AVX-512) loops.
#define FCN_HOST_DEVICE inline __attribute__((always_inline))
#else
#define FCN_HOST_DEVICE inline
#endif

namespace fcn {

// Geometry of one call, already validated on the host (deconv_crop_sum.h: plan_forward, plan_backward).
struct Geometry {
  int64_t N, C_in, C_out, Hi, Wi;   // x is N x C_in x Hi x Wi
  int64_t kh, kw, sh, sw;           // kernel and stride
  int64_t cin_g, cout_g;            // channels per group, in and out
  int64_t oh, ow, H, W;             // crop of the full output: rows [oh, oh+H), cols [ow, ow+W)
};

// A half-open range [begin, end).
template <typename I>
struct Span {
  I begin, end;
};

template <typename I>
FCN_HOST_DEVICE I floordiv(I a, I b) {  // b > 0
  I q = a / b;
  return (q * b > a) ? q - 1 : q;
}

template <typename I>
FCN_HOST_DEVICE I clamp_to(I v, I lo, I hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Inputs i in [0, in_size) with at least one tap landing in the full-output window [lo, hi):
// i*s + k - 1 >= lo and i*s <= hi - 1.  For a single output o (window [o, o+1)) these are exactly
// the inputs that contribute to o, each through tap o - i*s: the gather form of the deconvolution.
template <typename I>
FCN_HOST_DEVICE Span<I> inputs_touching(I lo, I hi, I s, I k, I in_size) {
  I b = floordiv<I>(lo - k, s) + 1;
  I e = floordiv<I>(hi - 1, s) + 1;
  return {clamp_to<I>(b, 0, in_size), clamp_to<I>(e, 0, in_size)};
}

// Taps t in [0, k) of input i that land inside the window [lo, hi): lo <= i*s + t < hi.
template <typename I>
FCN_HOST_DEVICE Span<I> taps_inside(I i, I s, I k, I lo, I hi) {
  I base = i * s;
  return {clamp_to<I>(lo - base, 0, k), clamp_to<I>(hi - base, 0, k)};
}

// Inputs i in [0, in_size) whose tap t lands inside the window [lo, hi): lo <= i*s + t < hi.
template <typename I>
FCN_HOST_DEVICE Span<I> inputs_with_tap_inside(I t, I s, I lo, I hi, I in_size) {
  I b = floordiv<I>(lo - t + s - 1, s);  // ceil((lo - t) / s)
  I e = floordiv<I>(hi - t + s - 1, s);  // ceil((hi - t) / s)
  return {clamp_to<I>(b, 0, in_size), clamp_to<I>(e, 0, in_size)};
}

// Forward, one output element: the deconvolution at cropped position (y, x) of output channel
// co, summed over the input channels of co's group.  x_n points at sample n (C_in x Hi x Wi,
// contiguous), w at the weight (C_in x cout_g x kh x kw, contiguous).  Used by the CUDA kernel
// and by the CPU kernel for strides without a vectorised path (cpu/forward.cpp).
template <typename acc_t, typename scalar_t, typename I>
FCN_HOST_DEVICE acc_t forward_point(const scalar_t* x_n, const scalar_t* w, const Geometry& g,
                                    I co, I y, I x) {
  const I Hi = g.Hi, Wi = g.Wi, kh = g.kh, kw = g.kw, sh = g.sh, sw = g.sw;
  const I Y = y + I(g.oh), X = x + I(g.ow);
  const Span<I> rows = inputs_touching<I>(Y, Y + 1, sh, kh, Hi);
  const Span<I> cols = inputs_touching<I>(X, X + 1, sw, kw, Wi);
  const I grp = co / I(g.cout_g), cog = co % I(g.cout_g);
  acc_t acc = acc_t(0);
  for (I j = 0; j < I(g.cin_g); ++j) {
    const I ci = grp * I(g.cin_g) + j;
    const scalar_t* xp = x_n + ci * Hi * Wi;
    const scalar_t* wp = w + (ci * I(g.cout_g) + cog) * kh * kw;
    for (I iy = rows.begin; iy < rows.end; ++iy) {
      const scalar_t* xr = xp + iy * Wi;
      const scalar_t* wr = wp + (Y - iy * sh) * kw;
      for (I ix = cols.begin; ix < cols.end; ++ix)
        acc += static_cast<acc_t>(xr[ix]) * static_cast<acc_t>(wr[X - ix * sw]);
    }
  }
  return acc;
}

// Backward to x, one input element (n, ci, iy, ix): the sum of grad_out * weight over every
// output channel of ci's group and every tap that lands inside the crop.  grad_n points at
// sample n of the cropped gradient (C_out x H x W, contiguous).  The CUDA kernel; on the CPU
// the row ends and the strides without a vectorised path (cpu/backward.cpp).
template <typename acc_t, typename scalar_t, typename I>
FCN_HOST_DEVICE acc_t grad_input_point(const scalar_t* grad_n, const scalar_t* w,
                                       const Geometry& g, I ci, I iy, I ix) {
  const I H = g.H, W = g.W, kh = g.kh, kw = g.kw;
  const Span<I> ky = taps_inside<I>(iy, I(g.sh), kh, I(g.oh), I(g.oh) + H);
  const Span<I> kx = taps_inside<I>(ix, I(g.sw), kw, I(g.ow), I(g.ow) + W);
  const I y0 = iy * I(g.sh) - I(g.oh), x0 = ix * I(g.sw) - I(g.ow);  // output of tap 0
  const I grp = ci / I(g.cin_g);
  acc_t acc = acc_t(0);
  for (I cog = 0; cog < I(g.cout_g); ++cog) {
    const I co = grp * I(g.cout_g) + cog;
    const scalar_t* gp = grad_n + co * H * W;
    const scalar_t* wp = w + (ci * I(g.cout_g) + cog) * kh * kw;
    for (I t = ky.begin; t < ky.end; ++t) {
      const scalar_t* gr = gp + (y0 + t) * W + x0;
      const scalar_t* wr = wp + t * kw;
      for (I u = kx.begin; u < kx.end; ++u)
        acc += static_cast<acc_t>(gr[u]) * static_cast<acc_t>(wr[u]);
    }
  }
  return acc;
}

// Backward to the weight, one term row: sum over input columns of x[ix] * grad[ix*sw + tx - ow]
// for kernel column tx, i.e. one (n, iy) row of the weight-gradient reduction.  xr and gr point at
// matching rows of x and of the cropped gradient.  Shared by CPU (per tap row) and CUDA.
template <typename acc_t, typename scalar_t, typename I>
FCN_HOST_DEVICE acc_t grad_weight_row(const scalar_t* xr, const scalar_t* gr, const Geometry& g,
                                      I tx) {
  const I sw = g.sw, ow = g.ow;
  const Span<I> cols = inputs_with_tap_inside<I>(tx, sw, ow, ow + I(g.W), I(g.Wi));
  acc_t acc = acc_t(0);
  for (I ix = cols.begin; ix < cols.end; ++ix)
    acc += static_cast<acc_t>(xr[ix]) * static_cast<acc_t>(gr[ix * sw + tx - ow]);
  return acc;
}

}  // namespace fcn
