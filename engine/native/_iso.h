/* engine.native._native: ISO-8601 timestamps in UTC, read as msgspec reads them. */
#ifndef ENGINE_NATIVE_ISO_H
#define ENGINE_NATIVE_ISO_H

#include <Python.h>

/* 1 with *out the aware UTC datetime of text (a new reference), 0 when text is not a UTC
 * timestamp this path reads (the caller leaves it to msgspec), -1 with an exception set. */
int iso_utc_datetime(PyObject *text, PyObject **out);

PyObject *native_iso_utc_datetime(PyObject *self, PyObject *text);
int iso_init(void);

#endif
