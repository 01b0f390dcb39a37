// CUDA kernels of deconv_crop_sum and its backward (float32, float64, float16, bfloat16).
//
// One thread per output element (forward) or per input element (grad x), one block per weight
// element (grad weight); the arithmetic is fcn_ops.h's, the same the CPU kernels use.  Half and
// bfloat16 accumulate in float.  Indices are int32 when the call fits, int64 otherwise.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../deconv_crop_sum.h"

namespace fcn {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t total) {
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20));
}

// The largest element offset a strided tensor reaches.
int64_t max_offset(const at::Tensor& t) {
  int64_t m = 0;
  for (int64_t d = 0; d < t.dim(); ++d) m += (t.size(d) - 1) * t.stride(d);
  return m;
}

template <typename I>
struct SkipView {
  I s0, s1, s2, s3;  // element strides of skip
  I oh, ow;          // skip_offset
};

template <typename T, typename I>
__global__ void forward_kernel(Geometry g, const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ skip, SkipView<I> sv, T* __restrict__ out,
                               I total) {
  using acc_t = at::opmath_type<T>;
  const I H = I(g.H), W = I(g.W), C_out = I(g.C_out);
  const I x_sample = I(g.C_in) * I(g.Hi) * I(g.Wi);
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += I(gridDim.x) * blockDim.x) {
    const I xo = idx % W;
    I t = idx / W;
    const I y = t % H;
    t /= H;
    const I co = t % C_out, n = t / C_out;
    acc_t acc = forward_point<acc_t, T, I>(x + n * x_sample, w, g, co, y, xo);
    if (skip != nullptr)
      acc += static_cast<acc_t>(skip[n * sv.s0 + co * sv.s1 + (y + sv.oh) * sv.s2 + (xo + sv.ow) * sv.s3]);
    out[idx] = static_cast<T>(acc);
  }
}

template <typename T, typename I>
__global__ void grad_input_kernel(Geometry g, const T* __restrict__ grad, const T* __restrict__ w,
                                  T* __restrict__ gx, I total) {
  using acc_t = at::opmath_type<T>;
  const I Hi = I(g.Hi), Wi = I(g.Wi), C_in = I(g.C_in);
  const I grad_sample = I(g.C_out) * I(g.H) * I(g.W);
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += I(gridDim.x) * blockDim.x) {
    const I ix = idx % Wi;
    I t = idx / Wi;
    const I iy = t % Hi;
    t /= Hi;
    const I ci = t % C_in, n = t / C_in;
    gx[idx] = static_cast<T>(grad_input_point<acc_t, T, I>(grad + n * grad_sample, w, g, ci, iy, ix));
  }
}

// One block per weight element (ci, cog, ky, kx); threads split the (n, iy) rows.
template <typename T, typename I>
__global__ void grad_weight_kernel(Geometry g, const T* __restrict__ x, const T* __restrict__ grad,
                                   T* __restrict__ gw) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t partial[kThreads];
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
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (int(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) gw[widx] = static_cast<T>(partial[0]);
}

template <typename I>
void launch_forward(const Geometry& g, const at::Tensor& xc, const at::Tensor& wc,
                    const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset,
                    at::Tensor& out) {
  SkipView<I> sv{0, 0, 0, 0, 0, 0};
  if (skip.has_value())
    sv = {I(skip->stride(0)), I(skip->stride(1)), I(skip->stride(2)), I(skip->stride(3)),
          I(skip_offset[0]), I(skip_offset[1])};
  const I total = I(out.numel());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "deconv_crop_sum_cuda", [&] {
    forward_kernel<scalar_t, I><<<blocks_for(total), kThreads, 0, stream>>>(
        g, xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
        skip.has_value() ? skip->const_data_ptr<scalar_t>() : nullptr, sv,
        out.mutable_data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename I>
void launch_grad_input(const Geometry& g, const at::Tensor& gc, const at::Tensor& wc, at::Tensor& gx) {
  const I total = I(gx.numel());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "deconv_crop_sum_backward_input_cuda", [&] {
    grad_input_kernel<scalar_t, I><<<blocks_for(total), kThreads, 0, stream>>>(
        g, gc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
        gx.mutable_data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename I>
void launch_grad_weight(const Geometry& g, const at::Tensor& xc, const at::Tensor& gc, at::Tensor& gw) {
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "deconv_crop_sum_backward_weight_cuda", [&] {
    grad_weight_kernel<scalar_t, I><<<gw.numel(), kThreads, 0, stream>>>(
        g, xc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(),
        gw.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor deconv_crop_sum_cuda(const at::Tensor& x, const at::Tensor& weight,
                                at::IntArrayRef stride, at::IntArrayRef offset,
                                at::IntArrayRef size, const std::optional<at::Tensor>& skip,
                                at::IntArrayRef skip_offset, int64_t groups) {
  const Geometry g = plan_forward(x, weight, stride, offset, size, skip, skip_offset, groups);
  TORCH_CHECK(x.is_cuda(), "deconv_crop_sum: CUDA kernel called with x on ", x.device());
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor out = at::empty({g.N, g.C_out, g.H, g.W}, x.options());
  if (fits_int32(g) && (!skip.has_value() || max_offset(*skip) < (int64_t(1) << 30)))
    launch_forward<int32_t>(g, xc, wc, skip, skip_offset, out);
  else
    launch_forward<int64_t>(g, xc, wc, skip, skip_offset, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> deconv_crop_sum_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef offset, at::IntArrayRef skip_size, at::IntArrayRef skip_offset, int64_t groups,
    std::array<bool, 3> output_mask) {
  const Geometry g = plan_backward(grad, x, weight, stride, offset, skip_size, skip_offset, groups,
                                   output_mask);
  TORCH_CHECK(x.is_cuda(), "deconv_crop_sum_backward: CUDA kernel called with x on ", x.device());
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gc = grad.contiguous(), wc = weight.contiguous();
  const bool small = fits_int32(g);
  at::Tensor gx, gw, gs;
  if (output_mask[0]) {
    gx = at::empty({g.N, g.C_in, g.Hi, g.Wi}, x.options());
    if (small) launch_grad_input<int32_t>(g, gc, wc, gx);
    else launch_grad_input<int64_t>(g, gc, wc, gx);
  }
  if (output_mask[1]) {
    const at::Tensor xc = x.contiguous();
    gw = at::empty(weight.sizes(), weight.options());
    if (small) launch_grad_weight<int32_t>(g, xc, gc, gw);
    else launch_grad_weight<int64_t>(g, xc, gc, gw);
  }
  if (output_mask[2]) {  // the skip's gradient: zeros with grad at the crop window
    gs = at::zeros(skip_size, grad.options());
    gs.narrow(2, skip_offset[0], grad.size(2)).narrow(3, skip_offset[1], grad.size(3)).copy_(grad);
  }
  return backward_result(gx, gw, gs, x);
}

}  // namespace
}  // namespace fcn

TORCH_LIBRARY_IMPL(fcn_caffe_repro, CUDA, m) {
  m.impl("deconv_crop_sum", &fcn::deconv_crop_sum_cuda);
  m.impl("deconv_crop_sum_backward", &fcn::deconv_crop_sum_backward_cuda);
}
