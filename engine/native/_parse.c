/* engine.native._native: parse, the consumer side of the rings (in the sender process):
 * slice whole records out of the mapping (engine/ring/_reader.py's _parse is the pure-Python
 * fallback), splicing a start and its adjacent end into one complete item, and joining
 * adjacent complete items into one run record (a piece of a request body, many calls). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_format.h"
#include "_parse.h"

typedef struct {
    uint8_t kind, flags;
    uint16_t project_len;
    uint32_t payload_len, aux;
    uint64_t enqueue_ns;
    const uint8_t *header, *project, *payload;
    Py_ssize_t next;  /* offset just past the record (padded), in the chunk */
} RawRecord;

/* The record at offset, if it lies whole within the chunk: 1; padding or cut: 0. */
static int raw_record_at(const uint8_t *chunk, Py_ssize_t chunk_len, Py_ssize_t offset,
                         RawRecord *r) {
    if (offset + HEADER_BYTES > chunk_len) return 0;
    const uint8_t *h = chunk + offset;
    if (h[0] == KIND_PAD) return 0;
    r->kind = h[0];
    r->flags = h[1];
    memcpy(&r->project_len, h + 2, 2);
    memcpy(&r->payload_len, h + 4, 4);
    memcpy(&r->aux, h + 8, 4);
    memcpy(&r->enqueue_ns, h + 48, 8);
    Py_ssize_t project_start = offset + HEADER_BYTES;
    Py_ssize_t payload_start = project_start + r->project_len;
    Py_ssize_t payload_end = payload_start + (Py_ssize_t)r->payload_len;
    if (payload_end > chunk_len) return 0;
    r->header = h;
    r->project = chunk + project_start;
    r->payload = chunk + payload_start;
    r->next = (payload_end + 7) & ~(Py_ssize_t)7;
    return 1;
}

/* A start directly followed by its own end (same call id and project) becomes one complete
 * item by splicing: start without its closing brace, a comma, the end from its splice
 * offset (aux), as the sender's router would do. */
static int splices(const RawRecord *a, const RawRecord *b, Py_ssize_t max_bytes) {
    if (a->kind != KIND_START || b->kind != KIND_END) return 0;
    if (memcmp(a->header + 16, b->header + 16, 16) != 0) return 0;
    if (a->project_len != b->project_len ||
        memcmp(a->project, b->project, a->project_len) != 0)
        return 0;
    if (a->payload_len < 2 || a->payload[a->payload_len - 1] != '}') return 0;
    if (b->aux >= b->payload_len) return 0;
    Py_ssize_t size = (Py_ssize_t)a->payload_len + b->payload_len - b->aux;
    return size <= max_bytes;
}

static PyObject *spliced_payload(const RawRecord *a, const RawRecord *b) {
    Py_ssize_t head = (Py_ssize_t)a->payload_len - 1, tail = (Py_ssize_t)(b->payload_len - b->aux);
    PyObject *out = PyBytes_FromStringAndSize(NULL, head + 1 + tail);
    if (out == NULL) return NULL;
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, a->payload, (size_t)head);
    p[head] = ',';
    memcpy(p + head + 1, b->payload + b->aux, (size_t)tail);
    return out;
}

static int append_end(PyObject *ends, unsigned long long end_pos) {
    if (ends == Py_None) return 0;
    PyObject *value = PyLong_FromUnsignedLongLong(end_pos);
    if (value == NULL) return -1;
    int rc = PyList_Append(ends, value);
    Py_DECREF(value);
    return rc;
}

/* A tuple of type with the n items (stolen); NULL if any is NULL (all released). */
static PyObject *new_record(PyTypeObject *type, PyObject **items, int n) {
    for (int i = 0; i < n; i++) {
        if (items[i] == NULL) {
            for (int j = 0; j < n; j++) Py_XDECREF(items[j]);
            return NULL;
        }
    }
    PyObject *record = type->tp_alloc(type, n);
    if (record == NULL) {
        for (int i = 0; i < n; i++) Py_DECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < n; i++) PyTuple_SET_ITEM(record, i, items[i]);
    return record;
}

/* One call of a run: a start spliced with its adjacent end, or a complete record. */
typedef struct {
    RawRecord a, b;   /* b: the end, when spliced */
    int spliced;
    Py_ssize_t size;  /* bytes of the call's complete item */
} Unit;

static int unit_at(const uint8_t *chunk, Py_ssize_t chunk_len, Py_ssize_t offset,
                   Py_ssize_t splice_max, Unit *u) {
    if (!raw_record_at(chunk, chunk_len, offset, &u->a)) return 0;
    if (u->a.kind == KIND_COMPLETE) {
        u->spliced = 0;
        u->size = u->a.payload_len;
        return 1;
    }
    if (!raw_record_at(chunk, chunk_len, u->a.next, &u->b) || !splices(&u->a, &u->b, splice_max))
        return 0;
    u->spliced = 1;
    u->size = (Py_ssize_t)u->a.payload_len + u->b.payload_len - u->b.aux;
    return 1;
}

static Py_ssize_t unit_next(const Unit *u) { return u->spliced ? u->b.next : u->a.next; }

static int same_project(const RawRecord *a, const RawRecord *b) {
    return a->project_len == b->project_len && memcmp(a->project, b->project, a->project_len) == 0;
}

/* How many calls from offset make one run: adjacent units of one project whose items,
 * joined by commas, take at most run_max bytes (*bytes gets that size), none starting at
 * or past stop_at. */
static Py_ssize_t run_extent(const uint8_t *chunk, Py_ssize_t chunk_len, Py_ssize_t offset,
                             Py_ssize_t stop_at, Py_ssize_t splice_max, Py_ssize_t run_max,
                             Py_ssize_t *bytes) {
    Unit first, u;
    if (!unit_at(chunk, chunk_len, offset, splice_max, &first)) return 0;
    Py_ssize_t count = 1, total = first.size, at = unit_next(&first);
    while (at < stop_at && unit_at(chunk, chunk_len, at, splice_max, &u) &&
           same_project(&first.a, &u.a) && total + 1 + u.size <= run_max) {
        total += 1 + u.size;
        at = unit_next(&u);
        count++;
    }
    *bytes = total;
    return count;
}

/* The run of count calls from offset (run_extent's): its payload, the calls' items joined
 * by commas, and per call its item's end offset in the payload (u32) and its call id (16
 * bytes). Appends every ring record's end position to ends; *next: the offset after it. */
static int run_parts(const uint8_t *chunk, Py_ssize_t chunk_len, Py_ssize_t offset,
                     Py_ssize_t count, Py_ssize_t bytes, Py_ssize_t splice_max,
                     unsigned long long position, PyObject *ends, PyObject **payload,
                     PyObject **calls, Py_ssize_t *next) {
    *payload = PyBytes_FromStringAndSize(NULL, bytes);
    *calls = PyBytes_FromStringAndSize(NULL, count * 20);
    if (*payload == NULL || *calls == NULL) return -1;
    char *p = PyBytes_AS_STRING(*payload), *c = PyBytes_AS_STRING(*calls);
    Unit u;
    for (Py_ssize_t k = 0; k < count; k++) {
        unit_at(chunk, chunk_len, offset, splice_max, &u);  /* run_extent found it whole */
        if (k) *p++ = ',';
        if (u.spliced) {
            Py_ssize_t head = (Py_ssize_t)u.a.payload_len - 1;
            memcpy(p, u.a.payload, (size_t)head);
            p[head] = ',';
            memcpy(p + head + 1, u.b.payload + u.b.aux, (size_t)(u.b.payload_len - u.b.aux));
        } else {
            memcpy(p, u.a.payload, u.a.payload_len);
        }
        p += u.size;
        uint32_t end = (uint32_t)(p - PyBytes_AS_STRING(*payload));
        memcpy(c, &end, 4);
        memcpy(c + 4, u.a.header + 16, 16);
        c += 20;
        if ((u.spliced && append_end(ends, position + (unsigned long long)u.a.next) < 0) ||
            append_end(ends, position + (unsigned long long)unit_next(&u)) < 0)
            return -1;
        offset = unit_next(&u);
    }
    *next = offset;
    return 0;
}


/* A run record (run_type: a record's ten fields and calls): the first call's ids and
 * enqueue time, aux the number of calls. Returns it, NULL with an exception set. */
static PyObject *run_record(PyTypeObject *run_type, PyObject *slot, unsigned long long end_pos,
                            const Unit *first, PyObject *project, Py_ssize_t count,
                            PyObject *payload, PyObject *calls) {
    Py_INCREF(slot);
    Py_INCREF(project);
    PyObject *items[11] = {
        slot,
        PyLong_FromUnsignedLongLong(end_pos),
        PyLong_FromLong(KIND_RUN),
        PyLong_FromLong(0),
        PyBytes_FromStringAndSize((const char *)first->a.header + 16, 16),
        PyBytes_FromStringAndSize((const char *)first->a.header + 32, 16),
        project,
        payload,
        PyLong_FromSsize_t(count),
        PyLong_FromUnsignedLongLong(first->a.enqueue_ns),
        calls,
    };
    return new_record(run_type, items, 11);
}

/* parse(mapping, start, stop, slot, position, out, limit, max_bytes, record_type, ends,
 *       splice_max_bytes, run_max_bytes, run_type) -> used
 * Appends the whole records of mapping[start:stop] that start within max_bytes, until
 * len(out) == limit; stops at padding, at a tail shorter than a header and at a record cut
 * by stop. Returns the bytes used (0: the caller tells those cases apart). ``ends`` (a list,
 * or None) gets the end position of every ring record consumed. With splice_max_bytes > 0
 * a start directly followed by its end is appended as ONE record of kind KIND_SPLICED: the
 * complete item as payload, the end's end position, flags and the start's ids and
 * enqueue time; its aux is the end position of the start record. With run_max_bytes > 0
 * too, two or more such calls (or complete records) side by side, of one project, become
 * ONE record of run_type and kind KIND_RUN: their items joined by commas (at most
 * run_max_bytes), the last one's end position, aux the number of calls, and ``calls`` (see
 * run_parts). Adjacent records only, so releasing up to any record's end never frees a
 * start whose item is still unsent. */
PyObject *native_parse(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "parse takes 13 arguments");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), stop = PyLong_AsSsize_t(args[2]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[6]), max_bytes = PyLong_AsSsize_t(args[7]);
    Py_ssize_t splice_max = PyLong_AsSsize_t(args[10]), run_max = PyLong_AsSsize_t(args[11]);
    unsigned long long position = PyLong_AsUnsignedLongLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    PyObject *slot = args[3], *out = args[5], *ends = args[9];
    PyTypeObject *record_type = (PyTypeObject *)args[8], *run_type = (PyTypeObject *)args[12];
    if (!PyList_Check(out) || !PyType_Check(args[8]) || !PyType_Check(args[12]) ||
        !PyType_IsSubtype(record_type, &PyTuple_Type) ||
        !PyType_IsSubtype(run_type, &PyTuple_Type) || (ends != Py_None && !PyList_Check(ends))) {
        PyErr_SetString(PyExc_TypeError,
                        "parse: out and ends must be lists, record_type and run_type tuple types");
        return NULL;
    }
    if (splice_max <= 0) run_max = 0;  /* runs are of complete calls: complete mode only */
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    if (start < 0 || stop < start || stop > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "parse: start/stop outside the mapping");
        return NULL;
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);  /* the caller loaded the head before this */
    const uint8_t *chunk = (const uint8_t *)view.buf + start;
    Py_ssize_t chunk_len = stop - start;
    Py_ssize_t stop_at = chunk_len - HEADER_BYTES + 1;
    if (max_bytes < 1) max_bytes = 1;
    if (max_bytes < stop_at) stop_at = max_bytes;
    Py_ssize_t offset = 0;
    PyObject *last_project = NULL;
    int failed = 0;
    RawRecord r, partner;
    while (offset < stop_at && PyList_GET_SIZE(out) < limit) {
        if (!raw_record_at(chunk, chunk_len, offset, &r)) break;
        PyObject *project;
        /* consecutive records mostly share a project: one object for all of them */
        if (last_project != NULL && PyBytes_GET_SIZE(last_project) == r.project_len &&
            memcmp(PyBytes_AS_STRING(last_project), r.project, r.project_len) == 0) {
            project = last_project;
            Py_INCREF(project);
        } else {
            project = PyBytes_FromStringAndSize((const char *)r.project, r.project_len);
            if (project == NULL) {
                failed = 1;
                break;
            }
            last_project = project;
        }
        Py_ssize_t run_bytes = 0, calls_in_run = 0;
        if (run_max > 0)
            calls_in_run = run_extent(chunk, chunk_len, offset, stop_at, splice_max, run_max,
                                      &run_bytes);
        if (calls_in_run >= 2) {
            Unit first;
            unit_at(chunk, chunk_len, offset, splice_max, &first);
            PyObject *payload = NULL, *calls = NULL;
            Py_ssize_t next;
            PyObject *record = NULL;
            if (run_parts(chunk, chunk_len, offset, calls_in_run, run_bytes, splice_max, position,
                          ends, &payload, &calls, &next) == 0) {
                record = run_record(run_type, slot, position + (unsigned long long)next, &first,
                                    project, calls_in_run, payload, calls);
            } else {
                Py_XDECREF(payload);
                Py_XDECREF(calls);
            }
            Py_DECREF(project);
            if (record == NULL || PyList_Append(out, record) < 0) {
                Py_XDECREF(record);
                failed = 1;
                break;
            }
            Py_DECREF(record);
            offset = next;
            continue;
        }
        int pair = splice_max > 0 && raw_record_at(chunk, chunk_len, r.next, &partner) &&
                   splices(&r, &partner, splice_max);
        Py_ssize_t next = pair ? partner.next : r.next;
        Py_INCREF(slot);
        PyObject *items[10] = {
            slot,
            PyLong_FromUnsignedLongLong(position + (unsigned long long)next),
            PyLong_FromLong(pair ? KIND_SPLICED : r.kind),
            PyLong_FromLong(pair ? partner.flags : r.flags),
            PyBytes_FromStringAndSize((const char *)r.header + 16, 16),
            PyBytes_FromStringAndSize((const char *)r.header + 32, 16),
            project,
            pair ? spliced_payload(&r, &partner)
                 : PyBytes_FromStringAndSize((const char *)r.payload, r.payload_len),
            pair ? PyLong_FromUnsignedLongLong(position + (unsigned long long)r.next)
                 : PyLong_FromUnsignedLong(r.aux),
            PyLong_FromUnsignedLongLong(r.enqueue_ns),
        };
        PyObject *record = new_record(record_type, items, 10);
        if (record == NULL) {
            failed = 1;
            break;
        }
        int appended = PyList_Append(out, record);
        Py_DECREF(record);
        if (appended < 0 ||
            (pair && append_end(ends, position + (unsigned long long)r.next) < 0) ||
            append_end(ends, position + (unsigned long long)next) < 0) {
            failed = 1;
            break;
        }
        offset = next;
    }
    PyBuffer_Release(&view);
    if (failed) return NULL;
    return PyLong_FromSsize_t(offset);
}
