// The device-independent host side of deconv_crop_sum (deconv_crop_sum.h): argument validation into
// a Geometry, the backward's result tuple and the 32-bit index check, for the CPU and CUDA entry points.
#include "deconv_crop_sum.h"

#include <ATen/ATen.h>


namespace fcn {
namespace {

void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, "deconv_crop_sum: ", name, " must have 2 elements (rows, cols), got ",
              v.size());
  TORCH_CHECK(v[0] >= min_value && v[1] >= min_value, "deconv_crop_sum: ", name, " must be >= ",
              min_value, ", got ", v);
}

void check_dtype_device(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device() == x.device(), "deconv_crop_sum: ", name, " is on ", t.device(),
              " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "deconv_crop_sum: ", name, " has dtype ",
              t.scalar_type(), " but x has dtype ", x.scalar_type());
}

void check_nonempty_4d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "deconv_crop_sum: ", name, " must be 4-D (N x C x H x W), got ",
              t.dim(), "-D of shape ", t.sizes());
  TORCH_CHECK(t.numel() > 0, "deconv_crop_sum: ", name, " must be non-empty, got shape ",
              t.sizes());
}

// Everything about x, weight, stride, offset, crop size and groups; fills g.
Geometry plan_common(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                     at::IntArrayRef offset, at::IntArrayRef size, int64_t groups) {
  check_nonempty_4d(x, "x");
  check_nonempty_4d(weight, "weight (C_in x C_out/groups x kh x kw)");
  check_dtype_device(weight, x, "weight");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "deconv_crop_sum: x must be floating point, got ",
              x.scalar_type());
  check_pair(stride, "stride", 1);
  check_pair(offset, "offset", 0);
  check_pair(size, "size", 1);
  TORCH_CHECK(groups >= 1, "deconv_crop_sum: groups must be >= 1, got ", groups);
  const int64_t C_in = x.size(1);
  TORCH_CHECK(weight.size(0) == C_in, "deconv_crop_sum: weight has ", weight.size(0),
              " input channels (dim 0) but x has ", C_in);
  TORCH_CHECK(C_in % groups == 0, "deconv_crop_sum: groups=", groups,
              " does not divide the input channels (", C_in, ")");
  Geometry g{};
  g.N = x.size(0);
  g.C_in = C_in;
  g.Hi = x.size(2);
  g.Wi = x.size(3);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.sh = stride[0];
  g.sw = stride[1];
  g.cin_g = C_in / groups;
  g.cout_g = weight.size(1);
  g.C_out = g.cout_g * groups;
  g.oh = offset[0];
  g.ow = offset[1];
  g.H = size[0];
  g.W = size[1];
  const int64_t full_h = (g.Hi - 1) * g.sh + g.kh, full_w = (g.Wi - 1) * g.sw + g.kw;
  TORCH_CHECK(g.oh + g.H <= full_h && g.ow + g.W <= full_w, "deconv_crop_sum: crop rows [", g.oh,
              ", ", g.oh + g.H, ") x cols [", g.ow, ", ", g.ow + g.W,
              ") lies outside the deconvolution output of size ", full_h, " x ", full_w);
  return g;
}

void check_skip_extent(const Geometry& g, at::IntArrayRef skip_size, at::IntArrayRef skip_offset) {
  check_pair(skip_offset, "skip_offset", 0);
  TORCH_CHECK(skip_size[0] == g.N && skip_size[1] == g.C_out, "deconv_crop_sum: skip has shape ",
              skip_size, " but the output has batch ", g.N, " and ", g.C_out, " channels");
  TORCH_CHECK(skip_offset[0] + g.H <= skip_size[2] && skip_offset[1] + g.W <= skip_size[3],
              "deconv_crop_sum: skip of spatial size ", skip_size[2], " x ", skip_size[3],
              " is too small for a ", g.H, " x ", g.W, " crop at offset ", skip_offset);
}

}  // namespace

Geometry plan_forward(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                      at::IntArrayRef offset, at::IntArrayRef size,
                      const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset,
                      int64_t groups) {
  Geometry g = plan_common(x, weight, stride, offset, size, groups);
  if (skip.has_value()) {
    check_nonempty_4d(*skip, "skip");
    check_dtype_device(*skip, x, "skip");
    check_skip_extent(g, skip->sizes(), skip_offset);
  }
  return g;
}

Geometry plan_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                       at::IntArrayRef stride, at::IntArrayRef offset, at::IntArrayRef skip_size,
                       at::IntArrayRef skip_offset, int64_t groups,
                       const std::array<bool, 3>& output_mask) {
  check_nonempty_4d(grad, "grad");
  check_dtype_device(grad, x, "grad");
  const int64_t hw[2] = {grad.size(2), grad.size(3)};
  Geometry g = plan_common(x, weight, stride, offset, hw, groups);
  TORCH_CHECK(grad.size(0) == g.N && grad.size(1) == g.C_out, "deconv_crop_sum_backward: grad has shape ",
              grad.sizes(), " but the output has batch ", g.N, " and ", g.C_out, " channels");
  if (output_mask[2]) {
    TORCH_CHECK(skip_size.size() == 4, "deconv_crop_sum_backward: skip_size must have 4 elements, got ",
                skip_size);
    check_skip_extent(g, skip_size, skip_offset);
  }
  return g;
}

void match_caffe_when_not_finite(const Geometry& g, const at::Tensor& grad, const at::Tensor& x,
                                 const at::Tensor& weight, int64_t groups, at::Tensor& gx,
                                 at::Tensor& gw) {
  const bool redo_gx = gx.defined() && !at::isfinite(weight).all().item<bool>();
  const bool redo_gw = gw.defined() && !at::isfinite(x).all().item<bool>();
  if (!redo_gx && !redo_gw) return;
  const auto wide = grad.options().dtype(at::kDouble);
  at::Tensor full = at::zeros({g.N, g.C_out, (g.Hi - 1) * g.sh + g.kh, (g.Wi - 1) * g.sw + g.kw}, wide);
  full.narrow(2, g.oh, g.H).narrow(3, g.ow, g.W).copy_(grad);
  const int64_t stride[2] = {g.sh, g.sw}, zero[2] = {0, 0}, one[2] = {1, 1};
  auto [full_gx, full_gw, unused_gb] = at::convolution_backward(
      full, x.to(at::kDouble), weight.to(at::kDouble), std::nullopt, stride, zero, one,
      /*transposed=*/true, zero, groups, {redo_gx, redo_gw, false});
  if (redo_gx) gx = full_gx.to(gx.scalar_type());
  if (redo_gw) gw = full_gw.to(gw.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_result(at::Tensor gx, at::Tensor gw, at::Tensor gs,
                                                               const at::Tensor& like) {
  for (at::Tensor* t : {&gx, &gw, &gs})
    if (!t->defined()) *t = at::empty({0}, like.options());
  return {gx, gw, gs};
}

bool fits_int32(const Geometry& g) {
  // 2^30, not 2^31 - 1: a grid-stride loop index may run one stride (< 2^28) past the last element.
  const int64_t lim = int64_t(1) << 30;
  const int64_t full_h = (g.Hi - 1) * g.sh + g.kh, full_w = (g.Wi - 1) * g.sw + g.kw;
  return g.N * g.C_out * g.H * g.W < lim && g.N * g.C_in * g.Hi * g.Wi < lim &&
         g.C_in * g.cout_g * g.kh * g.kw < lim && full_h < lim && full_w < lim;
}

}  // namespace fcn
