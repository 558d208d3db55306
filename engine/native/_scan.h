/* engine.native._native: json_depth_over (engine serve's nesting check of request bodies). */
#ifndef ENGINE_NATIVE_SCAN_H
#define ENGINE_NATIVE_SCAN_H

#include <Python.h>

PyObject *native_json_depth_over(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* 1 when the JSON text in [p, end) nests deeper than limit (brackets outside strings), else 0 */
int json_nests_deeper(const char *p, const char *end, long limit);

#endif
