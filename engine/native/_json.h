/* engine.native._native: what the other files use of the JSON encoder in _json.c */
#ifndef ENGINE_NATIVE_JSON_H
#define ENGINE_NATIVE_JSON_H

#include <Python.h>

typedef struct {
    char *p;
    size_t len, cap;
    int borrowed;  /* p is someone else's memory (a ring's free space): growing, or any call
                    * out to Python, first moves what was written to a buffer of our own */
} JBuf;

void jbuf_free(JBuf *b);

/* The levels of containers a value of an item's field may nest, its own included: deeper,
 * json_encode_item raises ValueError, and the producer writes a sanitised copy with the
 * deeper parts replaced (engine/wire/_depth.py MAX_VALUE_DEPTH, the same number: engine
 * serve refuses a body nested past 256 levels, weave's server past 200). */
#define MAX_VALUE_DEPTH 100

/* Encode a Struct whose type has a plan into b (reset first): 1 done, 0 no plan for its
 * type (nothing written; the caller uses msgspec), -1 error. *splice_at: the offset of the
 * plan's splice key, -1 if that field was left out. *callouts: how many values went to
 * fallback (Python code may have run: an enc_hook, a stringified count). *noted: values
 * written in another form and counted (NaN/inf as null, bytes-like as base64): the caller
 * has the producer take the counts (take_counts); an item not encoded counts none. A value
 * nested deeper than MAX_VALUE_DEPTH (what msgspec wrote for one included; a msgspec.Raw's
 * own levels are not counted) is an error. */
int json_encode_item(JBuf *b, PyObject *item, PyObject *fallback, Py_ssize_t *splice_at,
                     size_t *callouts, size_t *noted);

/* The fields a ring record's header carries, read off an item whose type has a plan with
 * project_id, id and trace_id (borrowed; NULL for an unset field): 1, or 0 if no such plan.
 * started_at, ended_at (may be NULL): those fields too, NULL when unset or not in the type. */
int json_item_ids(PyObject *item, PyObject **project, PyObject **id, PyObject **trace_id,
                  PyObject **started_at, PyObject **ended_at);

/* An exact datetime in datetime.timezone.utc (what the wire takes without a closer look). */
int json_is_utc_datetime(PyObject *obj);

PyObject *native_struct_plan(PyObject *self, PyObject *args);
PyObject *native_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *native_utcnow(PyObject *self, PyObject *unused);
PyObject *native_take_counts(PyObject *self, PyObject *unused);
PyObject *native_utc_datetime(PyObject *self, PyObject *args);
int json_init(void);

#endif
