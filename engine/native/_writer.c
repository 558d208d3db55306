/* engine.native._native: RingWriter, the producer side of one ring slot, in C.
 *
 * Frame, copy, publish (engine/ring/_writer.py's SlotWriter.try_write, the pure-Python
 * fallback, writes the same bytes); put() encodes the item first, with the JSON encoder of
 * _json.c for the wire Structs (msgspec's bytes) and msgspec for anything else; put_item /
 * call_start / call_end are the producer's hot path in one call.
 *
 * Memory ordering: the payload is copied, then the head is stored with release semantics,
 * so a consumer that loads the head and then the bytes (acquire) sees the whole record.
 * Between publishing the head and loading the consumer's "sleeping" flag a full fence
 * orders the store before the load, which closes the lost-wakeup window the pure-Python
 * writer (plain stores, x86-64 TSO) leaves to the consumer's bounded sleep.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "_call_items.h"
#include "_format.h"
#include "_ids.h"
#include "_json.h"
#include "_writer.h"

struct RingWriter {
    PyObject_HEAD
    Py_buffer view;       /* the whole shared mapping; held until release() */
    int has_view;
    uint8_t *data;        /* this slot's ring_bytes of data */
    uint64_t *head_word, *records_word, *released_word, *sleeping_word;
    uint64_t ring_bytes, max_record_total, half, quarter;
    uint64_t head, records, lap_end, limit;
    PyObject *encoder, *encode_into, *encode;  /* put()'s last encoder, and its methods */
    PyObject *bound_encoder, *projects;        /* bind(): what put_item() uses */
    Py_ssize_t max_payload;
    PyObject *scratch;    /* bytearray that msgspec encodes into (reused: no allocation) */
    JBuf json;            /* what the native encoder writes into (reused) */
    PyObject *refused;    /* bytes of the last item put() encoded but did not write */
    int busy;             /* put() is encoding: a re-entrant put() uses a fresh buffer */
};

static int writer_init(RingWriter *self, PyObject *args, PyObject *kwds) {
    PyObject *mapping;
    unsigned long long data_offset, ring_bytes, head_off, records_off, released_off, sleeping_off;
    static char *names[] = {"mapping", "data_offset", "ring_bytes", "head_offset",
                            "records_offset", "released_offset", "sleeping_offset", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OKKKKKK", names, &mapping, &data_offset,
                                     &ring_bytes, &head_off, &records_off, &released_off,
                                     &sleeping_off))
        return -1;
    if (self->has_view) {
        PyErr_SetString(PyExc_RuntimeError, "RingWriter is already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(mapping, &self->view, PyBUF_WRITABLE) < 0) return -1;
    self->has_view = 1;
    uint64_t size = (uint64_t)self->view.len;
    uint64_t offsets[] = {head_off, records_off, released_off, sleeping_off};
    for (int i = 0; i < 4; i++) {
        if (offsets[i] % 8 || offsets[i] + 8 > size) {
            PyErr_SetString(PyExc_ValueError, "RingWriter: a word offset is outside the mapping");
            return -1;
        }
    }
    if (ring_bytes < 4096 || ring_bytes % 8 || data_offset + ring_bytes > size) {
        PyErr_SetString(PyExc_ValueError, "RingWriter: the ring is outside the mapping");
        return -1;
    }
    uint8_t *base = (uint8_t *)self->view.buf;
    self->data = base + data_offset;
    self->head_word = (uint64_t *)(base + head_off);
    self->records_word = (uint64_t *)(base + records_off);
    self->released_word = (uint64_t *)(base + released_off);
    self->sleeping_word = (uint64_t *)(base + sleeping_off);
    self->ring_bytes = ring_bytes;
    self->max_record_total = ring_bytes & ~(uint64_t)7;  /* one record may take the whole ring */
    self->half = (ring_bytes / 2) & ~(uint64_t)7;
    self->quarter = (ring_bytes / 4) & ~(uint64_t)7;
    self->head = __atomic_load_n(self->head_word, __ATOMIC_RELAXED);
    self->records = __atomic_load_n(self->records_word, __ATOMIC_RELAXED);
    self->lap_end = (self->head / ring_bytes + 1) * ring_bytes;
    self->limit = __atomic_load_n(self->released_word, __ATOMIC_ACQUIRE) + ring_bytes;
    return 0;
}

static void writer_release_view(RingWriter *self) {
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
}

static void writer_dealloc(RingWriter *self) {
    writer_release_view(self);
    Py_XDECREF(self->encoder);
    Py_XDECREF(self->encode_into);
    Py_XDECREF(self->encode);
    Py_XDECREF(self->bound_encoder);
    Py_XDECREF(self->projects);
    Py_XDECREF(self->scratch);
    jbuf_free(&self->json);
    Py_XDECREF(self->refused);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* An id for the header: 16 raw bytes as struct's "16s" (shorter ones zero-padded, longer
 * ones cut), None as zeros, or UUID text parsed here. 1: ok, 0: text that is no UUID. */
static int get_id(PyObject *obj, const char *what, uint8_t out[16]) {
    if (PyBytes_Check(obj)) {
        Py_ssize_t n = PyBytes_GET_SIZE(obj);
        memset(out, 0, 16);
        memcpy(out, PyBytes_AS_STRING(obj), (size_t)(n < 16 ? n : 16));
        return 1;
    }
    if (obj == Py_None) {
        memset(out, 0, 16);
        return 1;
    }
    if (PyUnicode_Check(obj)) {
        if (id_cache_get(obj, out)) return 1;
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
        if (s == NULL) {
            PyErr_Clear();
            return 0;
        }
        if (parse_uuid(s, n, out) != 0) return 0;
        if (PyUnicode_CheckExact(obj)) id_cache_put(obj, out);
        return 1;
    }
    PyErr_Format(PyExc_TypeError, "%s must be bytes, str or None, not %.100s", what,
                 Py_TYPE(obj)->tp_name);
    return -1;
}

static void write_header(uint8_t *p, long kind, long flags, Py_ssize_t project_len,
                         uint64_t payload_len, uint32_t aux, const uint8_t call_id[16],
                         const uint8_t trace_id[16]) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t enqueue_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint16_t plen16 = (uint16_t)project_len;
    uint32_t len32 = (uint32_t)payload_len, zero = 0;
    p[0] = (uint8_t)kind;
    p[1] = (uint8_t)flags;
    memcpy(p + 2, &plen16, 2);
    memcpy(p + 4, &len32, 4);
    memcpy(p + 8, &aux, 4);
    memcpy(p + 12, &zero, 4);
    memcpy(p + 16, call_id, 16);
    memcpy(p + 32, trace_id, 16);
    memcpy(p + 48, &enqueue_ns, 8);
}

/* Make everything up to new_head visible: release-store the head, count the record, fence,
 * then look at the consumer's sleeping flag: 2 if it must be woken, else 1. */
static long publish(RingWriter *self, uint64_t new_head) {
    self->head = new_head;
    __atomic_store_n(self->head_word, self->head, __ATOMIC_RELEASE);
    self->records += 1;
    __atomic_store_n(self->records_word, self->records, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(self->sleeping_word, __ATOMIC_RELAXED) ? 2 : 1;
}

/* Where a record of size bytes must end in this lap: records up to a quarter of the ring
 * stay in the lap's first half (while no item is larger a ring touches half its memory,
 * and any of them still fits an empty ring at once, as records up to half of it did before
 * the whole ring was allowed); a larger one goes on to the lap's end. */
static inline uint64_t record_stop(const RingWriter *self, uint64_t size) {
    return size > self->quarter ? self->lap_end : self->lap_end - self->half;
}

/* Mark the rest of this lap as padding (a zero header, when there is room for one) and
 * move the head to the next lap; not published. */
static void skip_to_next_lap(RingWriter *self) {
    uint64_t tail_room = self->lap_end - self->head;
    if (tail_room >= HEADER_BYTES) memset(self->data + self->head % self->ring_bytes, 0, HEADER_BYTES);
    self->head = self->lap_end;
    self->lap_end += self->ring_bytes;
}

/* Frame, copy and publish one record: 1 written, 2 written and the consumer sleeps, 0 no
 * room now, -1 never fits this ring. */
static long write_record(RingWriter *self, long kind, long flags, const uint8_t call_id[16],
                         const uint8_t trace_id[16], const char *project, Py_ssize_t project_len,
                         const void *payload, uint64_t payload_len, uint32_t aux) {
    uint64_t size = (HEADER_BYTES + (uint64_t)project_len + payload_len + 7) & ~(uint64_t)7;
    if (payload_len > 0xFFFFFFFFu || size > self->max_record_total) return -1;
    uint64_t head = self->head;
    int wraps = head + size > record_stop(self, size);
    uint64_t end = wraps ? self->lap_end + size : head + size;
    if (end > self->limit) {
        self->limit = __atomic_load_n(self->released_word, __ATOMIC_ACQUIRE) + self->ring_bytes;
        if (end > self->limit) {
            /* A record may need the padding before it released too: publish the head past
             * it (the reader releases padding once everything before it is released), so
             * one larger than the ring minus the padding is written once the ring drains.
             * Only once the padding's room itself is free: unread records may still be
             * there. */
            if (wraps && self->lap_end <= self->limit) {
                skip_to_next_lap(self);
                __atomic_store_n(self->head_word, self->head, __ATOMIC_RELEASE);
            }
            return 0;
        }
    }
    if (wraps) {
        skip_to_next_lap(self);  /* the padding becomes visible with this record's head */
        head = self->head;
    }
    uint64_t ring_bytes = self->ring_bytes;
    uint8_t *p = self->data + head % ring_bytes;
    write_header(p, kind, flags, project_len, payload_len, aux, call_id, trace_id);
    memcpy(p + HEADER_BYTES, project, (size_t)project_len);
    memcpy(p + HEADER_BYTES + project_len, payload, (size_t)payload_len);
    uint64_t used = HEADER_BYTES + (uint64_t)project_len + payload_len;
    if (size > used) memset(p + used, 0, (size_t)(size - used));
    return publish(self, head + size);
}

/* The record whose payload was encoded in place at head + header (encode_and_write made
 * sure it fits before the lap end and the release limit): header, project, padding,
 * publish -- write_record without the copy. */
static long publish_in_place(RingWriter *self, long kind, long flags, const uint8_t call_id[16],
                             const uint8_t trace_id[16], const char *project,
                             Py_ssize_t project_len, uint64_t payload_len, uint32_t aux) {
    uint64_t size = (HEADER_BYTES + (uint64_t)project_len + payload_len + 7) & ~(uint64_t)7;
    uint64_t head = self->head;
    uint8_t *p = self->data + head % self->ring_bytes;
    write_header(p, kind, flags, project_len, payload_len, aux, call_id, trace_id);
    memcpy(p + HEADER_BYTES, project, (size_t)project_len);
    uint64_t used = HEADER_BYTES + (uint64_t)project_len + payload_len;
    if (size > used) memset(p + used, 0, (size_t)(size - used));
    return publish(self, head + size);
}

static int check_ready(RingWriter *self) {
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "RingWriter is released");
        return -1;
    }
    return 0;
}

/* The header fields common to try_write and put; returns 0, a negative code to hand back
 * (-2 / -3: bad call / trace id) as *code, or -1 with an exception set. */
static int header_args(PyObject *const *args, long *kind, long *flags, uint8_t call_id[16],
                       uint8_t trace_id[16], PyObject *project, long *code) {
    *kind = PyLong_AsLong(args[0]);
    *flags = PyLong_AsLong(args[1]);
    if (PyErr_Occurred()) return -1;
    if (*kind < 0 || *kind > 255 || *flags < 0 || *flags > 255) {
        PyErr_SetString(PyExc_ValueError, "record kind and flags must fit a byte");
        return -1;
    }
    if (!PyBytes_Check(project) || PyBytes_GET_SIZE(project) > 0xFFFF) {
        PyErr_SetString(PyExc_TypeError, "project must be bytes of at most 65535");
        return -1;
    }
    int ok = get_id(args[2], "call_id", call_id);
    if (ok <= 0) {
        *code = -2;
        return ok;
    }
    ok = get_id(args[3], "trace_id", trace_id);
    if (ok <= 0) {
        *code = -3;
        return ok;
    }
    return 0;
}

/* try_write(kind, flags, call_id, trace_id, project, payload, aux) -> int
 *   1: written; 2: written and the consumer sleeps (ring the doorbell); 0: no room now;
 *  -1: the record can never fit this ring; -2 / -3: call_id / trace_id is text but no UUID
 *  (the caller raises, naming the field). Ids: 16 raw bytes, UUID text or None. */
static PyObject *writer_try_write(RingWriter *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "try_write takes 7 arguments");
        return NULL;
    }
    if (check_ready(self) < 0) return NULL;
    long kind, flags, code = 0;
    uint8_t call_id[16], trace_id[16];
    int bad = header_args(args, &kind, &flags, call_id, trace_id, args[4], &code);
    if (bad < 0 && PyErr_Occurred()) return NULL;
    if (code) return PyLong_FromLong(code);
    unsigned long aux = PyLong_AsUnsignedLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (aux > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_ValueError, "aux must fit 32 bits");
        return NULL;
    }
    Py_buffer payload;
    if (PyObject_GetBuffer(args[5], &payload, PyBUF_SIMPLE) < 0) return NULL;
    code = write_record(self, kind, flags, call_id, trace_id, PyBytes_AS_STRING(args[4]),
                        PyBytes_GET_SIZE(args[4]), payload.buf, (uint64_t)payload.len,
                        (uint32_t)aux);
    PyBuffer_Release(&payload);
    return PyLong_FromLong(code);
}

static const char SPLICE_KEY[] = "\"ended_at\":";
#define SCRATCH_KEEP_BYTES (1 << 20)

/* Point the writer at encoder (put() re-points it when handed another one; bind() once). */
static int use_encoder(RingWriter *self, PyObject *encoder) {
    if (encoder == self->encoder) return 0;
    PyObject *into = PyObject_GetAttrString(encoder, "encode_into");
    if (into == NULL) return -1;
    PyObject *encode = PyObject_GetAttrString(encoder, "encode");
    if (encode == NULL) {
        Py_DECREF(into);
        return -1;
    }
    Py_INCREF(encoder);
    Py_XSETREF(self->encoder, encoder);
    Py_XSETREF(self->encode_into, into);
    Py_XSETREF(self->encode, encode);
    return 0;
}

/* Encode item (natively when its type has a plan, else with msgspec's encode_into) and
 * write it. Returns the code; an item not written is kept in self->refused, or, with
 * hand_back, returned as (code, bytes) instead. NULL with an exception set. */
static PyObject *encode_and_write(RingWriter *self, PyObject *item, long kind, long flags,
                                  const uint8_t call_id[16], const uint8_t trace_id[16],
                                  const char *project, Py_ssize_t project_len,
                                  Py_ssize_t max_payload, int splice, int hand_back,
                                  int *clean) {
    long code = 0;
    int reentrant = self->busy;  /* an enc_hook that traces a call lands here */
    JBuf local = {0};
    JBuf *json = reentrant ? &local : &self->json;
    PyObject *buffer = NULL, *result = NULL;
    const char *payload;
    Py_ssize_t payload_len, splice_at = -1;
    /* Encode straight into the ring's free space after the head, where the record will
     * be: no copy. The encoder moves to a buffer of its own when the item does not fit
     * there (it is then written as usual) or before it calls out to Python, which may
     * write to this ring itself (a hook that traces; another thread). */
    JBuf in_ring = {0};
    uint64_t head = self->head, header = HEADER_BYTES + (uint64_t)project_len;
    if (!reentrant) {
        /* (an item that does not fit before the middle: write_record places it) */
        uint64_t stop = self->lap_end - self->half;
        uint64_t end = stop < self->limit ? stop : self->limit;
        if (end < head + header + (64u << 10)) {  /* the stale limit may say too little */
            self->limit = __atomic_load_n(self->released_word, __ATOMIC_ACQUIRE) + self->ring_bytes;
            end = stop < self->limit ? stop : self->limit;
        }
        uint64_t most = self->max_record_total < 0xFFFFFFFFu ? self->max_record_total : 0xFFFFFFFFu;
        if (end > head + header && most > header) {
            uint64_t room = end - head - header;
            in_ring.p = (char *)self->data + head % self->ring_bytes + header;
            in_ring.cap = (size_t)(room < most - header ? room : most - header);
            in_ring.borrowed = 1;
            json = &in_ring;
        }
    }
    /* the encoder's methods are held: a put() from a hook may re-point the writer */
    PyObject *fallback = self->encode, *into = self->encode_into;
    Py_INCREF(fallback);
    Py_INCREF(into);
    self->busy = 1;
    size_t callouts = 0, noted = 0;
    int native = json_encode_item(json, item, fallback, &splice_at, &callouts, &noted);
    if (clean != NULL) *clean = native == 1 && callouts == 0 && noted == 0;
    self->busy = reentrant;
    if (native < 0) goto done;
    if (native) {
        payload = json->p;
        payload_len = (Py_ssize_t)json->len;
    } else {
        if (reentrant || self->scratch == NULL) {
            buffer = PyByteArray_FromStringAndSize(NULL, 0);
            if (buffer == NULL) goto done;
            if (!reentrant) {
                self->scratch = buffer;
                Py_INCREF(buffer);
            }
        } else {
            buffer = self->scratch;
            Py_INCREF(buffer);
        }
        PyObject *call_args[2] = {item, buffer};
        self->busy = 1;
        PyObject *ok = PyObject_Vectorcall(into, call_args, 2, NULL);
        self->busy = reentrant;
        if (ok == NULL) goto done;
        Py_DECREF(ok);
        payload = PyByteArray_AS_STRING(buffer);
        payload_len = PyByteArray_GET_SIZE(buffer);
    }
    if (check_ready(self) < 0) goto done;  /* a hook closed the writer under us */
    uint32_t aux = 0;
    if (payload_len > max_payload) {
        code = -4;
    } else if (splice) {
        if (!native) {
            const char *key = memmem(payload, (size_t)payload_len, SPLICE_KEY,
                                     sizeof(SPLICE_KEY) - 1);
            splice_at = key == NULL ? -1 : key - payload;
        }
        if (splice_at < 0) code = -5;
        else aux = (uint32_t)splice_at;
    }
    if (code == 0) {
        if (native && json->borrowed) {  /* encoded in place: no Python ran, head unmoved */
            code = publish_in_place(self, kind, flags, call_id, trace_id, project, project_len,
                                    (uint64_t)payload_len, aux);
        } else {
            code = write_record(self, kind, flags, call_id, trace_id, project, project_len,
                                payload, (uint64_t)payload_len, aux);
        }
    }
    if (code != 1 && code != 2) {  /* the caller waits or raises with these bytes: no re-encode */
        PyObject *kept = PyBytes_FromStringAndSize(payload, payload_len);
        if (kept == NULL) goto done;
        if (hand_back) {
            result = Py_BuildValue("(lN)", code, kept);
            goto done;
        }
        Py_XSETREF(self->refused, kept);
    }
    /* written, with values counted: the caller settles it, which takes the counts */
    result = hand_back && noted ? Py_BuildValue("(lO)", code, Py_None) : PyLong_FromLong(code);
done:
    /* one huge item must not pin its size in memory for the writer's whole life */
    if (!reentrant) {
        if (buffer != NULL && ((PyByteArrayObject *)buffer)->ob_alloc > SCRATCH_KEEP_BYTES)
            Py_CLEAR(self->scratch);
        if (self->json.cap > SCRATCH_KEEP_BYTES) jbuf_free(&self->json);
    }
    Py_XDECREF(buffer);
    Py_DECREF(fallback);
    Py_DECREF(into);
    jbuf_free(&local);
    jbuf_free(&in_ring);  /* frees only what it moved to (the ring is not ours to free) */
    return result;
}

/* put(encoder, item, kind, flags, call_id, trace_id, project, max_payload, splice) -> int
 * Encodes item into a reused buffer -- natively when its type has a plan (values it does
 * not cover go to encoder.encode one by one), else with encoder.encode_into -- and writes
 * it: try_write's codes, plus -4 when the encoded item is over max_payload (nothing
 * written) and -5 when splice is true but the encoding has no "ended_at" key. With splice,
 * aux is the offset of that key (where an end's payload fields begin: see
 * wire.calls.end_splice_offset). */
static PyObject *writer_put(RingWriter *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "put takes 9 arguments");
        return NULL;
    }
    if (check_ready(self) < 0) return NULL;
    long kind, flags, code = 0;
    uint8_t call_id[16], trace_id[16];
    if (header_args(args + 2, &kind, &flags, call_id, trace_id, args[6], &code) < 0 &&
        PyErr_Occurred())
        return NULL;
    if (code) return PyLong_FromLong(code);
    Py_ssize_t max_payload = PyLong_AsSsize_t(args[7]);
    int splice = PyObject_IsTrue(args[8]);
    if ((max_payload == -1 || splice < 0) && PyErr_Occurred()) return NULL;
    if (use_encoder(self, args[0]) < 0) return NULL;
    return encode_and_write(self, args[1], kind, flags, call_id, trace_id,
                            PyBytes_AS_STRING(args[6]), PyBytes_GET_SIZE(args[6]), max_payload,
                            splice, 0, NULL);
}

/* bind(encoder, max_payload, projects): what put_item uses. projects maps a project_id
 * (str) to its bytes; only projects in it are written by put_item (the caller validates
 * and adds them). */
static PyObject *writer_bind(RingWriter *self, PyObject *args) {
    PyObject *encoder, *projects;
    Py_ssize_t max_payload;
    if (!PyArg_ParseTuple(args, "OnO!:bind", &encoder, &max_payload, &PyDict_Type, &projects))
        return NULL;
    if (use_encoder(self, encoder) < 0) return NULL;
    Py_INCREF(encoder);
    Py_XSETREF(self->bound_encoder, encoder);
    Py_INCREF(projects);
    Py_XSETREF(self->projects, projects);
    self->max_payload = max_payload;
    Py_RETURN_NONE;
}

#define UNPLANNED -6

/* put_item(item, kind, flags, splice) -> code | (code, bytes)
 * put() for a wire Struct with the header read off the item itself (project_id, id,
 * trace_id; an empty trace_id is none) and bind()'s encoder, limit and projects: the
 * producer's hot path in one call. -6 (UNPLANNED): nothing done -- the type has no plan,
 * the id is missing, the project is not bound yet, or an id is not str/bytes/None; use
 * put(). A refused item comes back as (code, its bytes), never kept: threads may share
 * the writer between calls (each call holds the GIL throughout, except while a hook
 * runs, and a put during a hook encodes into its own buffer). */
/* put_item's work for a wire Struct once its header fields are read off it (borrowed):
 * the project's bound bytes, the raw ids, encode and write with bind()'s encoder and
 * limit. Returns encode_and_write's result (NULL: an error); NULL with no error and
 * *skipped set when nothing was done: UNPLANNED (the project is not bound, an id is not
 * str/bytes/None) or -2 / -3 (a call / trace id that is text but no UUID). *clean: see
 * encode_and_write (may be NULL). */
static PyObject *write_wire_item(RingWriter *self, PyObject *item, long kind, long flags,
                                 PyObject *project, PyObject *id, PyObject *trace, int splice,
                                 long *skipped, int *clean) {
    PyObject *project_b = PyUnicode_CheckExact(project)
                              ? PyDict_GetItemWithError(self->projects, project) : NULL;
    if (project_b == NULL) {
        if (!PyErr_Occurred()) *skipped = UNPLANNED;
        return NULL;
    }
    if (!PyBytes_Check(project_b)) {
        PyErr_SetString(PyExc_ValueError, "bind(): project bytes must be bytes");
        return NULL;
    }
    uint8_t call_id[16], trace_id[16];
    long bad = -2;
    int ok = get_id(id, "call_id", call_id);
    if (ok > 0) {
        bad = -3;
        ok = get_id(trace, "trace_id", trace_id);
    }
    if (ok <= 0) {
        if (ok < 0) PyErr_Clear();
        *skipped = ok < 0 ? UNPLANNED : bad;
        return NULL;
    }
    if (use_encoder(self, self->bound_encoder) < 0) return NULL;  /* put() may re-point it */
    /* held: a hook may change the item or the projects while its values are encoded */
    Py_INCREF(project_b);
    PyObject *result = encode_and_write(self, item, kind, flags, call_id, trace_id,
                                        PyBytes_AS_STRING(project_b),
                                        PyBytes_GET_SIZE(project_b), self->max_payload,
                                        splice, 1, clean);
    Py_DECREF(project_b);
    return result;
}

static PyObject *writer_put_item(RingWriter *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "put_item takes 4 arguments");
        return NULL;
    }
    if (check_ready(self) < 0) return NULL;
    if (self->bound_encoder == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "put_item before bind()");
        return NULL;
    }
    PyObject *item = args[0], *project, *id, *trace;
    int have = json_item_ids(item, &project, &id, &trace, NULL, NULL);
    if (have < 0) return NULL;
    if (!have || project == NULL || id == NULL || id == Py_None || trace == NULL)
        return PyLong_FromLong(UNPLANNED);
    long kind = PyLong_AsLong(args[1]), flags = PyLong_AsLong(args[2]);
    int splice = PyObject_IsTrue(args[3]);
    if ((kind == -1 || flags == -1 || splice < 0) && PyErr_Occurred()) return NULL;
    if (kind < 0 || kind > 255 || flags < 0 || flags > 255) {
        PyErr_SetString(PyExc_ValueError, "put_item: kind and flags must fit a byte");
        return NULL;
    }
    if (PyUnicode_CheckExact(trace) && PyUnicode_GET_LENGTH(trace) == 0) trace = Py_None;
    long skipped = 0;
    PyObject *result = write_wire_item(self, item, kind, flags, project, id, trace, splice,
                                       &skipped, NULL);
    if (result == NULL && skipped) return PyLong_FromLong(skipped);
    return result;
}


static inline int utc_or_none(PyObject *v) {
    return v == NULL || v == Py_None || json_is_utc_datetime(v);
}

/* Tracer.call_start / call_end in one call: an exact start (ids set) or end Struct with a
 * bound project (or a dict struct_of_dict makes one of), put_item's work, and the answer.
 * Returns the CallStartRes (start) or True (end) when the item is written and nothing is
 * left to do (no doorbell, no value went to Python); None when it did nothing (another
 * type, an id missing or not a UUID, the project not bound, a released writer: the
 * general path handles and names it); else put_item's code or (code, bytes), for the
 * caller to settle. */
PyObject *call_item(RingWriter *self, PyObject *item, int is_end) {
    if (PyDict_CheckExact(item) && self->has_view && self->bound_encoder != NULL) {
        PyObject *made = struct_of_dict(item, is_end);
        if (made == NULL || made == Py_None) return made;
        PyObject *result = call_item(self, made, is_end);
        Py_DECREF(made);
        return result;
    }
    if (!self->has_view || self->bound_encoder == NULL || start_type == NULL ||
        Py_TYPE(item) != (is_end ? end_type : start_type))
        Py_RETURN_NONE;
    PyObject *project, *id, *trace, *started, *ended;
    int have = json_item_ids(item, &project, &id, &trace, &started, &ended);
    if (have < 0) return NULL;
    if (!have || project == NULL || id == NULL || id == Py_None || trace == NULL)
        Py_RETURN_NONE;
    /* timestamps in UTC (the tracer's own are) go on; any other the general path checks:
     * naive, or out of range once in UTC, is an EncodeError there */
    if (is_end ? !utc_or_none(started) || ended == NULL || !json_is_utc_datetime(ended)
               : started == NULL || !json_is_utc_datetime(started))
        Py_RETURN_NONE;
    long flags = 0;
    if (is_end) {  /* flags as Tracer.call_end computes them; an empty trace_id is none */
        int t = PyObject_IsTrue(trace);
        if (t < 0) return NULL;
        if (!t) trace = Py_None;
        int st = started == NULL ? 0 : PyObject_IsTrue(started);
        if (st < 0) return NULL;
        if (t && st) flags = FLAG_END_HAS_TRACE;
    } else if (trace == Py_None) {
        Py_RETURN_NONE;  /* the general path makes the missing trace_id */
    }
    Py_INCREF(id);  /* for the answer: a hook may change the item while it is encoded */
    Py_INCREF(trace);
    long skipped = 0;
    int clean = 0;
    PyObject *result = write_wire_item(self, item, is_end ? KIND_END : KIND_START, flags,
                                       project, id, trace, is_end, &skipped, &clean);
    if (result == NULL && skipped) {
        result = Py_NewRef(Py_None);  /* the general path raises, naming the field */
    } else if (result != NULL && clean && PyLong_CheckExact(result) &&
               PyLong_AsLong(result) == 1) {
        Py_DECREF(result);
        if (is_end) {
            result = Py_NewRef(Py_True);
        } else {
            PyObject *kwargs[2] = {id, trace};
            result = PyObject_Vectorcall(start_res_type, kwargs, 0, start_res_kwnames);
        }
    }
    Py_DECREF(id);
    Py_DECREF(trace);
    return result;
}

PyObject *writer_call_start(RingWriter *self, PyObject *item) {
    return call_item(self, item, 0);
}

PyObject *writer_call_end(RingWriter *self, PyObject *item) {
    return call_item(self, item, 1);
}

static PyObject *writer_take_refused(RingWriter *self, PyObject *unused) {
    PyObject *kept = self->refused;
    self->refused = NULL;
    if (kept == NULL) Py_RETURN_NONE;
    return kept;
}

static PyObject *writer_release(RingWriter *self, PyObject *unused) {
    writer_release_view(self);
    Py_RETURN_NONE;
}

static PyObject *writer_get_head(RingWriter *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->head);
}

static PyMethodDef writer_methods[] = {
    {"try_write", (PyCFunction)(void (*)(void))writer_try_write, METH_FASTCALL,
     "try_write(kind, flags, call_id, trace_id, project, payload, aux) -> 1, 2 (ring the "
     "doorbell), 0 (no room now) or -1 (never fits)"},
    {"put", (PyCFunction)(void (*)(void))writer_put, METH_FASTCALL,
     "put(encoder, item, kind, flags, call_id, trace_id, project, max_payload, splice) -> "
     "try_write's codes, -4 (over max_payload) or -5 (splice: no ended_at key)"},
    {"bind", (PyCFunction)writer_bind, METH_VARARGS,
     "bind(encoder, max_payload, projects): the encoder, limit and project bytes of put_item"},
    {"put_item", (PyCFunction)(void (*)(void))writer_put_item, METH_FASTCALL,
     "put_item(item, kind, flags, splice) -> put's code, (code, bytes) if not written, or -6 "
     "(use put)"},
    {"call_start", (PyCFunction)writer_call_start, METH_O,
     "call_start(start) -> CallStartRes when done, None (not taken: use the general path), "
     "or put_item's code / (code, bytes) to settle"},
    {"call_end", (PyCFunction)writer_call_end, METH_O,
     "call_end(end) -> True when done, None (not taken), or put_item's code / (code, bytes)"},
    {"take_refused", (PyCFunction)writer_take_refused, METH_NOARGS,
     "The bytes of the last item put() encoded but did not write (then None)."},
    {"release", (PyCFunction)writer_release, METH_NOARGS,
     "Give the mapping's buffer back (before the mapping is closed)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef writer_getset[] = {
    {"head", (getter)writer_get_head, NULL, "this writer's head position", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject RingWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine.native._native.RingWriter",
    .tp_basicsize = sizeof(RingWriter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The producer side of one ring slot (see engine.ring.SlotWriter).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)writer_init,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_methods = writer_methods,
    .tp_getset = writer_getset,
};
