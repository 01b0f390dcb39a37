// CPU entry points of deconv_crop_sum and its backward: validation, allocation, registration.
//
// The kernels (forward.cpp, backward.cpp) run float32 and float64.  bfloat16 and float16 run them
// in float32, as the CUDA kernels accumulate half types in float (at::opmath_type): the inputs (x,
// the weight, the skip's crop window, the gradient) are widened once, the float32 kernel sums, and
// each result is rounded once to the input dtype.  The widened copies are small beside the output
// in FCN's upsampling (x and the skip are coarse score maps, the weight a few kernels).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../deconv_crop_sum.h"
#include "kernels.h"

namespace fcn {
namespace {

void check_cpu_dtype(const at::Tensor& x) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf,
              "deconv_crop_sum on CPU supports float32, float64, bfloat16 and float16, got ", t);
}

// Whether x's dtype runs through the float32 kernels (half types: see the top of this file).
bool widened(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf;
}

at::Tensor to_float(const at::Tensor& t) { return t.to(at::kFloat); }

at::Tensor deconv_crop_sum_cpu(const at::Tensor& x, const at::Tensor& weight,
                               at::IntArrayRef stride, at::IntArrayRef offset,
                               at::IntArrayRef size, const std::optional<at::Tensor>& skip,
                               at::IntArrayRef skip_offset, int64_t groups) {
  const Geometry g = plan_forward(x, weight, stride, offset, size, skip, skip_offset, groups);
  check_cpu_dtype(x);
  if (widened(x)) {
    std::optional<at::Tensor> skip_f;  // only the crop window the sum reads, widened
    if (skip.has_value())
      skip_f = to_float(skip->narrow(2, skip_offset[0], g.H).narrow(3, skip_offset[1], g.W));
    const int64_t at_origin[2] = {0, 0};
    at::Tensor out_f = at::empty({g.N, g.C_out, g.H, g.W}, x.options().dtype(at::kFloat));
    cpu::forward(g, to_float(x), to_float(weight), skip_f, at_origin, out_f);
    return out_f.to(x.scalar_type());
  }
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
  if (widened(x)) {
    const at::Tensor grad_f = to_float(grad);
    const auto dtype = x.scalar_type();
    if (output_mask[0]) {
      gx = at::empty({g.N, g.C_in, g.Hi, g.Wi}, x.options().dtype(at::kFloat));
      cpu::grad_input(g, grad_f, to_float(weight), gx);
      gx = gx.to(dtype);
    }
    if (output_mask[1]) {
      gw = at::empty(weight.sizes(), weight.options().dtype(at::kFloat));
      cpu::grad_weight(g, grad_f, to_float(x), gw);
      gw = gw.to(dtype);
    }
    if (output_mask[2]) gs = cpu::grad_skip(grad_f, skip_size, skip_offset).to(dtype);  // copies: exact
    match_caffe_when_not_finite(g, grad, x, weight, groups, gx, gw);
    return backward_result(gx, gw, gs, x);
  }
  if (output_mask[0]) {
    gx = at::empty({g.N, g.C_in, g.Hi, g.Wi}, x.options());
    cpu::grad_input(g, grad, weight, gx);
  }
  if (output_mask[1]) {
    gw = at::empty(weight.sizes(), weight.options());
    cpu::grad_weight(g, grad, x, gw);
  }
  if (output_mask[2]) gs = cpu::grad_skip(grad, skip_size, skip_offset);
  match_caffe_when_not_finite(g, grad, x, weight, groups, gx, gw);
  return backward_result(gx, gw, gs, x);
}

}  // namespace
}  // namespace fcn

TORCH_LIBRARY_IMPL(fcn_caffe_repro, CPU, m) {
  m.impl("deconv_crop_sum", &fcn::deconv_crop_sum_cpu);
  m.impl("deconv_crop_sum_backward", &fcn::deconv_crop_sum_backward_cpu);
}
