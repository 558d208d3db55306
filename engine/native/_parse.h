/* engine.native._native: the consumer side -- whole records sliced out of the mapping. */
#ifndef ENGINE_NATIVE_PARSE_H
#define ENGINE_NATIVE_PARSE_H

#include <Python.h>

PyObject *native_parse(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
