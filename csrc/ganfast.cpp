// ganfast.cpp: every operator's schema, defined once. The kernels register themselves per
// dispatch key (csrc/cpu/*.cpp: CPU, csrc/cuda/*.cu: CUDA), the autograd formulas in
// csrc/autograd.cpp, the fake (meta) implementations in ganfast/ops.
//
// Conventions shared by every op family:
//   * string enums ("mean", "nonsaturating") rather than integer codes, so no table of
//     numbers is duplicated between C++, Triton and Python;
//   * each op `x` has `x_backward` (gradient w.r.t. its first input) as an op of its own,
//     so autograd can differentiate it again where a family promises double backward.
#include <torch/library.h>


TORCH_LIBRARY(ganfast, m) {
  // ---- losses family (csrc/cpu/losses.cpp, csrc/cuda/losses.cu, ganfast/triton/losses.py) ----
  // torch.nn.functional.binary_cross_entropy_with_logits; weight and pos_weight broadcast to
  // input; reduction is "none", "mean" or "sum".
  m.def("bce_with_logits(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
        "str reduction) -> Tensor");
  m.def("bce_with_logits_backward(Tensor grad_output, Tensor input, Tensor target, "
        "Tensor? weight, Tensor? pos_weight, str reduction) -> Tensor");
  m.def("bce_with_logits_target_backward(Tensor grad_output, Tensor input, Tensor target, "
        "Tensor? weight, Tensor? pos_weight, str reduction) -> Tensor");
  // torch.nn.functional.binary_cross_entropy on probabilities in [0, 1].
  m.def("binary_cross_entropy(Tensor input, Tensor target, Tensor? weight, str reduction) -> Tensor");
  m.def("binary_cross_entropy_backward(Tensor grad_output, Tensor input, Tensor target, "
        "Tensor? weight, str reduction) -> Tensor");
  m.def("binary_cross_entropy_target_backward(Tensor grad_output, Tensor input, Tensor target, "
        "Tensor? weight, str reduction) -> Tensor");
  // The discriminator's GAN loss: mean over real of its real term + mean over fake of its
  // fake term, both halves in one kernel (kinds in csrc/gan_math.h). Returns a 0-dim tensor.
  m.def("gan_d_loss(Tensor real_logits, Tensor fake_logits, str kind, float real_label, "
        "float fake_label) -> Tensor");
  m.def("gan_d_loss_backward(Tensor grad_output, Tensor real_logits, Tensor fake_logits, "
        "str kind, float real_label, float fake_label) -> (Tensor, Tensor)");
  // The generator's GAN loss: mean over fake of its term. Returns a 0-dim tensor.
  m.def("gan_g_loss(Tensor fake_logits, str kind) -> Tensor");
  m.def("gan_g_loss_backward(Tensor grad_output, Tensor fake_logits, str kind) -> Tensor");
}

// `import ganfast._C` loads this library, whose static initialisers register the ops above and
// their kernels; the Python module itself is empty.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "ganfast's operator library", -1, nullptr};
  return PyModule_Create(&module);
}
