/* engine.native._native: json_depth_over, the nesting check engine serve makes of every
 * request body before decoding it (engine/server/_limits.py has the same in Python).
 *
 * Brackets count outside strings only. A string is skipped with memchr to its next quote
 * (and past escaped ones), so the text that makes up most of a trace body is read at
 * memchr's speed; only what lies between strings is looked at byte by byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_scan.h"

/* Past the string whose opening quote is just before p: the byte after its closing quote,
 * or NULL when it never closes (the decoder refuses such a body). */
static const char *past_string(const char *p, const char *end) {
    for (;;) {
        const char *quote = memchr(p, '"', (size_t)(end - p));
        if (quote == NULL) return NULL;
        const char *run = quote;
        while (run > p && run[-1] == '\\') run--;
        p = quote + 1;
        if (((quote - run) & 1) == 0) return p;  /* an even run of backslashes: it closes */
    }
}

int json_nests_deeper(const char *p, const char *end, long limit) {
    long depth = 0;
    while (p < end) {
        switch (*p++) {
            case '"':
                p = past_string(p, end);
                if (p == NULL) return 0;
                break;
            case '[':
            case '{':
                if (++depth > limit) return 1;
                break;
            case ']':
            case '}':
                depth--;
                break;
        }
    }
    return 0;
}

/* json_depth_over(body, limit) -> True when the JSON in body nests deeper than limit */
PyObject *native_json_depth_over(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "json_depth_over takes a buffer and a limit");
        return NULL;
    }
    long limit = PyLong_AsLong(args[1]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const char *p = view.buf;
    int over;
    Py_BEGIN_ALLOW_THREADS  /* megabytes, touching no Python object: the writer thread runs */
    over = json_nests_deeper(p, p + view.len, limit);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyBool_FromLong(over);
}
