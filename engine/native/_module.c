/* engine.native._native: the hot loops of the ring and the producer, in C; the module.
 *
 * Optional: engine/ring/_writer.py, _reader.py and engine/wire/_codec.py fall back to their
 * pure-Python versions when this module is not built (no compiler) or ENGINE_PURE_PYTHON=1
 * is set. Both implementations write and read the same bytes; the tests run both.
 *
 *   _writer.c      RingWriter: the producer side of one slot (frame, copy, publish; put,
 *                  put_item, call_start / call_end: encode and write in one call)
 *   _json.c        the JSON encoder of the wire Structs (msgspec's bytes)
 *   _call_items.c  the wire types of call_start / call_end, and dicts of them
 *   _iso.c         ISO-8601 timestamps in UTC, read as msgspec reads them (dicts' times)
 *   _scan.c        json_depth_over: engine serve's nesting check of request bodies
 *   _rows.c        call_dicts: engine serve's stored call rows as the dicts reads answer;
 *                  take_rows: a chunk of a stream's rows, bounded in rows and bytes
 *   _calls.c       TracerCalls and CallHandleBase: the Tracer's call path without a frame
 *   _parse.c       the consumer side: slice whole records out of the mapping
 *   _ids.c         uuid7 / uuid7_bytes / uuid_bytes, the id cache
 *   _format.h      the record format both sides share
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_call_items.h"
#include "_calls.h"
#include "_format.h"
#include "_ids.h"
#include "_iso.h"
#include "_json.h"
#include "_parse.h"
#include "_rows.h"
#include "_scan.h"
#include "_writer.h"

static PyMethodDef native_methods[] = {
    {"uuid7", native_uuid7, METH_NOARGS, "A new UUIDv7 as lowercase 8-4-4-4-12 text."},
    {"json_depth_over", (PyCFunction)(void (*)(void))native_json_depth_over, METH_FASTCALL,
     "json_depth_over(body, limit) -> True when the JSON in body nests deeper than limit "
     "(brackets outside strings)."},
    {"iso_utc_datetime", native_iso_utc_datetime, METH_O,
     "iso_utc_datetime(text) -> the UTC datetime msgspec makes of ISO-8601 text in UTC, or "
     "None for any other text (see engine/native/_iso.c)."},
    {"call_dicts", (PyCFunction)(void (*)(void))native_call_dicts, METH_FASTCALL,
     "call_dicts(rows, keys, kinds, raw_type, from_us) -> one dict per row, its times as "
     "UTC datetimes and JSON text as raw_type (see engine/native/_rows.c)."},
    {"take_rows", (PyCFunction)(void (*)(void))native_take_rows, METH_FASTCALL,
     "take_rows(rows, want, max_bytes, sized) -> (up to want rows of the iterator, fewer once "
     "the values at sized pass max_bytes; whether it ran out) (see engine/native/_rows.c)."},
    {"uuid7_bytes", native_uuid7_bytes, METH_NOARGS, "A new UUIDv7 as (text, 16 raw bytes)."},
    {"uuid_bytes", native_uuid_bytes, METH_O, "16 raw bytes of a UUID text; ValueError if not one."},
    {"struct_plan", native_struct_plan, METH_VARARGS,
     "struct_plan(type, names, descriptors, defaults, splice_name, unset): let the native "
     "encoder write this Struct type (see engine/native/_json.c)."},
    {"encode", (PyCFunction)(void (*)(void))native_encode, METH_FASTCALL,
     "encode(fallback, obj) -> bytes: obj as the native encoder writes it (msgspec's bytes)."},
    {"utcnow", native_utcnow, METH_NOARGS,
     "utcnow() -> datetime.now(timezone.utc), to the microsecond (rounded down)."},
    {"utc_datetime", native_utc_datetime, METH_VARARGS,
     "utc_datetime(secs, us) -> the aware UTC datetime utcnow() makes of that instant."},
    {"reseed", native_reseed, METH_NOARGS, "Reseed the id generator from the OS (after fork)."},
    {"call_types", native_call_types, METH_VARARGS,
     "call_types(start_type, end_type, start_res_type): the types RingWriter.call_start / "
     "call_end take and answer."},
    {"writes_cut", native_writes_cut, METH_NOARGS,
     "writes_cut() -> the epoch of the call handles' starts and ends begun so far (later "
     "ones count apart)."},
    {"writes_before", native_writes_before, METH_O,
     "writes_before(epoch) -> those of them other threads are still writing (a start whose "
     "call is not yet in the open calls, an end whose call was taken out of them)."},
    {"call_handle_setup", native_call_handle_setup, METH_VARARGS,
     "call_handle_setup(current_var, describe, write_safely, open_calls): what "
     "CallHandleBase needs (the ContextVar of the current call; exception -> text; what to "
     "do when a write raised; the dict of this process's calls started and not ended)."},
    {"take_counts", native_take_counts, METH_NOARGS,
     "take_counts() -> (nonfinite, bytes, duplicate_key): values the encoder wrote in "
     "another form, or dropped with a key written twice, since the last call (then zero)."},
    {"call_dict_fields", native_call_dict_fields, METH_VARARGS,
     "call_dict_fields(start_fields, end_fields): (name, kind, required, id) per field, so "
     "RingWriter.call_start / call_end take dicts of those types too."},
    {"parse", (PyCFunction)(void (*)(void))native_parse, METH_FASTCALL,
     "parse(mapping, start, stop, slot, position, out, limit, max_bytes, record_type, ends, "
     "splice_max_bytes, run_max_bytes, run_type) -> used"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "engine.native._native",
    "Hot loops of the ring and the producer (optional; pure-Python fallbacks exist).", -1,
    native_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (ids_init() < 0 || json_init() < 0 || iso_init() < 0 || rows_init() < 0) return NULL;
    if (PyType_Ready(&RingWriterType) < 0) return NULL;
#ifndef Py_GIL_DISABLED
    if (calls_init() < 0) return NULL;
#endif
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL) return NULL;
#ifndef Py_GIL_DISABLED
    /* without the GIL, reading the fields races with close(): the Python base is used */
    Py_INCREF(&TracerCallsType);
    if (PyModule_AddObject(module, "TracerCalls", (PyObject *)&TracerCallsType) < 0) {
        Py_DECREF(&TracerCallsType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&CallHandleType);
    if (PyModule_AddObject(module, "CallHandleBase", (PyObject *)&CallHandleType) < 0) {
        Py_DECREF(&CallHandleType);
        Py_DECREF(module);
        return NULL;
    }
#endif
    Py_INCREF(&RingWriterType);
    if (PyModule_AddObject(module, "RingWriter", (PyObject *)&RingWriterType) < 0) {
        Py_DECREF(&RingWriterType);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "HEADER_BYTES", HEADER_BYTES) < 0 ||
        PyModule_AddIntConstant(module, "KIND_SPLICED", KIND_SPLICED) < 0 ||
        PyModule_AddIntConstant(module, "MAX_VALUE_DEPTH", MAX_VALUE_DEPTH) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
