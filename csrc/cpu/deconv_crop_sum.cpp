// CPU entry points of deconv_crop_sum and its backward: validation, allocation, registration.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../deconv_crop_sum.h"
#include "kernels.h"

namespace fcn {
namespace {

void check_cpu_dtype(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "deconv_crop_sum on CPU supports float32 and float64, got ", x.scalar_type(),
              " (float16 and bfloat16 are supported on CUDA)");
}

at::Tensor deconv_crop_sum_cpu(const at::Tensor& x, const at::Tensor& weight,
                               at::IntArrayRef stride, at::IntArrayRef offset,
                               at::IntArrayRef size, const std::optional<at::Tensor>& skip,
                               at::IntArrayRef skip_offset, int64_t groups) {
  const Geometry g = plan_forward(x, weight, stride, offset, size, skip, skip_offset, groups);
  check_cpu_dtype(x);
  at::Tensor out = at::empty({g.N, g.C_out, g.H, g.W}, x.options());
  cpu::forward(g, x, weight, skip, skip_offset, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> deconv_crop_sum_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef offset, at::IntArrayRef skip_size, at::IntArrayRef skip_offset, int64_t groups,
    std::array<bool, 3> output_mask) {
  const Geometry g = plan_backward(grad, x, weight, stride, offset, skip_size, skip_offset, groups,
                                   output_mask);
  check_cpu_dtype(x);
  at::Tensor gx, gw, gs;
  if (output_mask[0]) {
    gx = at::empty({g.N, g.C_in, g.Hi, g.Wi}, x.options());
    cpu::grad_input(g, grad, weight, gx);
  }
  if (output_mask[1]) {
    gw = at::empty(weight.sizes(), weight.options());
    cpu::grad_weight(g, grad, x, gw);
  }
  if (output_mask[2]) gs = cpu::grad_skip(grad, skip_size, skip_offset);
  return backward_result(gx, gw, gs, x);
}

}  // namespace
}  // namespace fcn

TORCH_LIBRARY_IMPL(fcn_caffe_repro, CPU, m) {
  m.impl("deconv_crop_sum", &fcn::deconv_crop_sum_cpu);
  m.impl("deconv_crop_sum_backward", &fcn::deconv_crop_sum_backward_cpu);
}
