/* engine.native._native: the wire types Tracer.call_start / call_end take and answer
 * (call_types()), and dicts of them made into those types (call_dict_fields()). */
#ifndef ENGINE_NATIVE_CALL_ITEMS_H
#define ENGINE_NATIVE_CALL_ITEMS_H

#include <Python.h>

/* NULL until call_types() */
extern PyTypeObject *start_type, *end_type;
extern PyObject *start_res_type, *start_res_kwnames;

/* The start (is_end 0) or end Struct a dict of its fields makes; Py_None when the dict is
 * not one the fast path takes (see _call_items.c); NULL with an exception set. */
PyObject *struct_of_dict(PyObject *d, int is_end);

PyObject *native_call_types(PyObject *self, PyObject *args);
PyObject *native_call_dict_fields(PyObject *self, PyObject *args);

#endif
