// The operator schemas of fcn_caffe_repro (one TORCH_LIBRARY block) and the Python module _C.
// Kernels register per dispatch key: cpu/deconv_crop_sum.cpp, cuda/deconv_crop_sum.cu, cpu/max_pool.cpp,
// cpu/small_conv.cpp, cpu/winograd.cpp;
// autograd.cpp holds deconv_crop_sum's Autograd kernel (max_pool's and small_conv's are ops.py's).
#include <Python.h>
#include <torch/library.h>

// Importing fcn_caffe_repro._C loads this library, which registers the operators below.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "fcn_caffe_repro C++/CUDA operators", -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(fcn_caffe_repro, m) {
  // out = conv_transpose2d(x, weight, stride, groups)[:, :, oh:oh+H, ow:ow+W]
  //       + skip[:, :, sh:sh+H, sw:sw+W]            (skip optional; no padding, no bias)
  m.def(
      "deconv_crop_sum(Tensor x, Tensor weight, int[2] stride, int[2] offset, int[2] size, "
      "Tensor? skip, int[2] skip_offset, int groups) -> Tensor");
  // Gradients for (x, weight, skip); a gradient whose output_mask entry is false comes back as
  // an empty tensor.  skip_size is the skip's shape (ignored when output_mask[2] is false); SymInt
  // so that the Autograd kernel can pass it under torch.compile's dynamic shapes.
  m.def(
      "deconv_crop_sum_backward(Tensor grad, Tensor x, Tensor weight, int[2] stride, "
      "int[2] offset, SymInt[] skip_size, int[2] skip_offset, int groups, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // MAX pooling without padding, Caffe's output size: (pooled top, uint8 winner position in its
  // window, row * kernel_w + col).  CPU only (cpu/max_pool.cpp): the training path's pooling.
  m.def("max_pool_forward(Tensor x, int[2] kernel, int[2] stride) -> (Tensor, Tensor)");
  m.def("max_pool_backward(Tensor grad, Tensor mask, int[4] input_size, int[2] kernel, int[2] stride) -> Tensor");
  // 3x3 convolution, stride 1, padding 1, 4/8/16 channels in and out, float32, channels_last
  // results.  CPU only (cpu/small_conv.cpp): the training path of the width-divided nets.  The
  // backward gives (input, weight, bias) gradients; an output_mask entry false: an empty tensor.
  m.def("small_conv_forward(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("small_conv_backward(Tensor grad, Tensor x, Tensor weight, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Winograd F(2x2, 3x3)'s transforms around torch.bmm for 3x3, stride-1 float32 convolutions
  // (cpu/winograd.cpp; the fast inference mode's wide layers, fast/winograd.py).  out: where to
  // write (None: a new tensor); activation: 0 none, 1 ReLU, 2 leaky ReLU with slope; the bool:
  // every pre-activation value finite.
  m.def("winograd_input(Tensor x, int[2] pad, Tensor? out) -> Tensor");
  m.def("winograd_output(Tensor m, Tensor? bias, int[3] out_size, int activation, float slope) -> (Tensor, bool)");
}
