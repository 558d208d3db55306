/* engine.native._native: engine serve's stored call rows as the dicts its reads answer. */
#ifndef ENGINE_NATIVE_ROWS_H
#define ENGINE_NATIVE_ROWS_H

#include <Python.h>

PyObject *native_call_dicts(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *native_take_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
int rows_init(void);

#endif
