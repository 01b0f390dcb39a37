// CUDA entry points of deconv_crop_sum and its backward (float32, float64, float16, bfloat16): the
// launches of the kernels in kernels.cuh (which the CPU-emulated tests run too).  Indices are int32
// when the call fits, int64 otherwise.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../deconv_crop_sum.h"
#include "kernels.cuh"

namespace fcn {
namespace {

template <typename I>
void launch_forward(const Geometry& g, const at::Tensor& xc, const at::Tensor& wc,
                    const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset,
                    at::Tensor& out) {
  const SkipView<I> sv = skip_view<I>(skip, skip_offset);
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
  if (forward_fits_int32(g, skip))
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
  match_caffe_when_not_finite(g, grad, x, weight, groups, gx, gw);
  return backward_result(gx, gw, gs, x);
}

}  // namespace
}  // namespace fcn

TORCH_LIBRARY_IMPL(fcn_caffe_repro, CUDA, m) {
  m.impl("deconv_crop_sum", &fcn::deconv_crop_sum_cuda);
  m.impl("deconv_crop_sum_backward", &fcn::deconv_crop_sum_backward_cuda);
}
