/* engine.native._native: the Tracer's types in C -- TracerCalls (the base of engine.Tracer:
 * call_start / call_end without a Python frame) and CallHandleBase (tracer.call's handle). */
#ifndef ENGINE_NATIVE_CALLS_H
#define ENGINE_NATIVE_CALLS_H

#include <Python.h>

extern PyTypeObject TracerCallsType, CallHandleType;

int calls_init(void);  /* at import, where the GIL is on: the names called back, both types */
PyObject *native_call_handle_setup(PyObject *self, PyObject *args);
PyObject *native_writes_cut(PyObject *self, PyObject *unused);
PyObject *native_writes_before(PyObject *self, PyObject *arg);

#endif
