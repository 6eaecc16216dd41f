// python_module.cpp: the Python module `ganfast._C`. Importing it loads the library, whose static
// initialisers register the ops of ganfast.cpp and their kernels. The module itself holds only the
// switch of the lean double backward (autograd/autograd_common.h; ganfast.ops.lean_double_backward
// wraps it): thread-local state, not an op, so setting it is not a dispatched operation. Kept out
// of ganfast.cpp, which the CUDA emulator (tests/cuda_emu) builds without the autograd files.
#include <Python.h>

namespace ganfast::autograd {
bool lean_double_backward();
void set_lean_double_backward(bool on);
}  // namespace ganfast::autograd

namespace {
PyObject* py_set_lean_double_backward(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  const bool previous = ganfast::autograd::lean_double_backward();
  ganfast::autograd::set_lean_double_backward(on != 0);
  return PyBool_FromLong(previous);
}

PyObject* py_lean_double_backward(PyObject*, PyObject*) {
  return PyBool_FromLong(ganfast::autograd::lean_double_backward());
}

PyMethodDef methods[] = {
    {"_set_lean_double_backward", py_set_lean_double_backward, METH_O,
     "Set this thread's lean double-backward flag; returns the previous value."},
    {"_lean_double_backward", py_lean_double_backward, METH_NOARGS, "This thread's lean double-backward flag."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "ganfast's operator library", -1, methods};
  return PyModule_Create(&module);
}
