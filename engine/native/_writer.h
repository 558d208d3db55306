/* engine.native._native: RingWriter, the producer side of one ring slot (see _writer.c). */
#ifndef ENGINE_NATIVE_WRITER_H
#define ENGINE_NATIVE_WRITER_H

#include <Python.h>

typedef struct RingWriter RingWriter;
extern PyTypeObject RingWriterType;

/* RingWriter.call_start / call_end: Tracer.call_start / call_end's one-call path */
PyObject *writer_call_start(RingWriter *self, PyObject *item);
PyObject *writer_call_end(RingWriter *self, PyObject *item);
PyObject *call_item(RingWriter *self, PyObject *item, int is_end);

#endif
