/* engine.native._native: the hot loops of the ring and the producer, in C.
 *
 * Optional: engine/ring/_writer.py, _reader.py and engine/wire/_codec.py fall back to their
 * pure-Python versions when this module is not built (no compiler) or ENGINE_PURE_PYTHON=1 is set.
 * Both implementations write and read the same bytes; the tests run both.
 *
 *   RingWriter   the producer side of one slot: frame, copy, publish (SlotWriter.try_write);
 *                put() encodes the item first, with the JSON encoder of _native_json.c
 *                for the wire Structs (msgspec's bytes) and msgspec for anything else
 *   parse        the consumer side: slice whole records out of the mapping (ring._parse)
 *   uuid7 / uuid7_bytes / uuid_bytes   ids without Python big-int arithmetic
 *
 * Record layout (little-endian, as ring.RECORD_HEADER "<BBHII4x16s16sQ"): kind u8, flags u8,
 * project_len u16, payload_len u32, aux u32, 4 pad bytes, call_id 16, trace_id 16,
 * enqueue_ns u64; then project, payload, zero padding to a multiple of 8.
 *
 * Memory ordering: the payload is copied, then the head is stored with release semantics,
 * so a consumer that loads the head and then the bytes (acquire) sees the whole record.
 * Between publishing the head and loading the consumer's "sleeping" flag a full fence
 * orders the store before the load, which closes the lost-wakeup window the pure-Python
 * writer (plain stores, x86-64 TSO) leaves to the consumer's bounded sleep.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include "_json.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "engine.native._native assumes a little-endian host (the ring format is little-endian)"
#endif

#define HEADER_BYTES 56
#define KIND_PAD 0

/* ---- ids ------------------------------------------------------------------------------ */

/* xoshiro256** : ids need uniqueness, not secrecy (as in _codec: a private PRNG, reseeded
 * from the OS after fork so a child never repeats its parent's sequence). */
static uint64_t rng_state[4];

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(void) {
    uint64_t *s = rng_state;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static int rng_seed(void) {
    uint8_t *p = (uint8_t *)rng_state;
    size_t got = 0;
    while (got < sizeof(rng_state)) {
        ssize_t n = getrandom(p + got, sizeof(rng_state) - got, 0);
        if (n < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        got += (size_t)n;
    }
    if (!(rng_state[0] | rng_state[1] | rng_state[2] | rng_state[3])) rng_state[0] = 1;
    return 0;
}

static PyObject *native_reseed(PyObject *self, PyObject *unused) {
    if (rng_seed() < 0) return NULL;
    Py_RETURN_NONE;
}

static void make_uuid7(uint8_t raw[16]) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    uint64_t a = rng_next(), b = rng_next();
    for (int i = 0; i < 6; i++) raw[i] = (uint8_t)(ms >> (40 - 8 * i));
    raw[6] = (uint8_t)(0x70 | (a & 0x0F));  /* version 7 + 12 bits rand_a */
    raw[7] = (uint8_t)(a >> 8);
    raw[8] = (uint8_t)(0x80 | ((b >> 56) & 0x3F));  /* RFC 4122 variant + 62 bits rand_b */
    for (int i = 9; i < 16; i++) raw[i] = (uint8_t)(b >> (8 * (15 - i)));
}

static const char HEX[] = "0123456789abcdef";

static PyObject *uuid_text_of(const uint8_t raw[16]) {
    PyObject *text = PyUnicode_New(36, 127);
    if (text == NULL) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    int j = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[j++] = '-';
        out[j++] = HEX[raw[i] >> 4];
        out[j++] = HEX[raw[i] & 15];
    }
    return text;
}

/* The last ids made or parsed, by object: a call's start and end name the same id and
 * trace objects, made by uuid7() just before, so their headers skip parsing the text.
 * The entries hold their str (immutable), so a pointer match is a content match. */
#define ID_CACHE 8
#ifndef Py_GIL_DISABLED
static PyObject *id_cache_text[ID_CACHE];
static uint8_t id_cache_raw[ID_CACHE][16];
static int id_cache_next;
#endif

static void id_cache_put(PyObject *text, const uint8_t raw[16]) {
#ifndef Py_GIL_DISABLED
    int k = id_cache_next;
    id_cache_next = (k + 1) % ID_CACHE;
    Py_INCREF(text);
    Py_XSETREF(id_cache_text[k], text);
    memcpy(id_cache_raw[k], raw, 16);
#endif
}

static int id_cache_get(PyObject *text, uint8_t raw[16]) {
#ifndef Py_GIL_DISABLED
    for (int k = 0; k < ID_CACHE; k++) {
        if (id_cache_text[k] == text) {
            memcpy(raw, id_cache_raw[k], 16);
            return 1;
        }
    }
#endif
    return 0;
}

static PyObject *native_uuid7(PyObject *self, PyObject *unused) {
    uint8_t raw[16];
    make_uuid7(raw);
    PyObject *text = uuid_text_of(raw);
    if (text != NULL) id_cache_put(text, raw);
    return text;
}

static PyObject *native_uuid7_bytes(PyObject *self, PyObject *unused) {
    uint8_t raw[16];
    make_uuid7(raw);
    PyObject *text = uuid_text_of(raw);
    if (text == NULL) return NULL;
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)raw, 16);
    if (bytes == NULL) {
        Py_DECREF(text);
        return NULL;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(text);
        Py_DECREF(bytes);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, text);
    PyTuple_SET_ITEM(pair, 1, bytes);
    return pair;
}

/* hex digit -> value, anything else -> 0xFF (filled at import) */
static uint8_t HEX_VALUE[256];

static void init_hex_table(void) {
    memset(HEX_VALUE, 0xFF, sizeof(HEX_VALUE));
    for (int i = 0; i < 10; i++) HEX_VALUE['0' + i] = (uint8_t)i;
    for (int i = 0; i < 6; i++) HEX_VALUE['a' + i] = HEX_VALUE['A' + i] = (uint8_t)(10 + i);
}

/* Canonical 8-4-4-4-12 text (either case) or 32 bare hex digits -> 16 bytes; -1 if neither. */
static int parse_uuid(const char *s, Py_ssize_t n, uint8_t raw[16]) {
    static const uint8_t DASHED_AT[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};
    int dashed = (n == 36);
    if (!dashed && n != 32) return -1;
    if (dashed && (s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')) return -1;
    const unsigned char *u = (const unsigned char *)s;
    unsigned bad = 0;
    for (int i = 0; i < 16; i++) {
        int k = dashed ? DASHED_AT[i] : 2 * i;
        uint8_t hi = HEX_VALUE[u[k]], lo = HEX_VALUE[u[k + 1]];
        bad |= hi | lo;
        raw[i] = (uint8_t)(hi << 4 | lo);
    }
    return (bad & 0xF0) ? -1 : 0;
}

static PyObject *native_uuid_bytes(PyObject *self, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "a UUID must be str, not %.100s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    if (s == NULL) return NULL;
    uint8_t raw[16];
    if (parse_uuid(s, n, raw) < 0) {
        PyErr_Format(PyExc_ValueError, "%R is not a UUID", text);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)raw, 16);
}

/* ---- the producer side of one ring slot ----------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer view;       /* the whole shared mapping; held until release() */
    int has_view;
    uint8_t *data;        /* this slot's ring_bytes of data */
    uint64_t *head_word, *records_word, *released_word, *sleeping_word;
    uint64_t ring_bytes, max_record_total;
    uint64_t head, records, lap_end, limit;
    PyObject *encoder, *encode_into, *encode;  /* put()'s last encoder, and its methods */
    PyObject *bound_encoder, *projects;        /* bind(): what put_item() uses */
    Py_ssize_t max_payload;
    PyObject *scratch;    /* bytearray that msgspec encodes into (reused: no allocation) */
    JBuf json;            /* what the native encoder writes into (reused) */
    PyObject *refused;    /* bytes of the last item put() encoded but did not write */
    int busy;             /* put() is encoding: a re-entrant put() uses a fresh buffer */
} RingWriter;

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
    self->max_record_total = (ring_bytes / 2) & ~(uint64_t)7;
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

/* Frame, copy and publish one record: 1 written, 2 written and the consumer sleeps, 0 no
 * room now, -1 never fits this ring. */
static long write_record(RingWriter *self, long kind, long flags, const uint8_t call_id[16],
                         const uint8_t trace_id[16], const char *project, Py_ssize_t project_len,
                         const void *payload, uint64_t payload_len, uint32_t aux) {
    uint64_t size = (HEADER_BYTES + (uint64_t)project_len + payload_len + 7) & ~(uint64_t)7;
    if (payload_len > 0xFFFFFFFFu || size > self->max_record_total) return -1;
    uint64_t head = self->head;
    int wraps = head + size > self->lap_end;
    uint64_t end = wraps ? self->lap_end + size : head + size;
    if (end > self->limit) {
        self->limit = __atomic_load_n(self->released_word, __ATOMIC_ACQUIRE) + self->ring_bytes;
        if (end > self->limit) return 0;
    }
    uint64_t ring_bytes = self->ring_bytes;
    if (wraps) {
        /* the padding becomes visible with the head published after this record */
        uint64_t tail_room = self->lap_end - head;
        if (tail_room >= HEADER_BYTES) memset(self->data + head % ring_bytes, 0, HEADER_BYTES);
        head = self->lap_end;
        self->lap_end += ring_bytes;
    }
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
        uint64_t end = self->lap_end < self->limit ? self->lap_end : self->limit;
        if (end - head < header + (64u << 10)) {  /* the stale limit may say too little */
            self->limit = __atomic_load_n(self->released_word, __ATOMIC_ACQUIRE) + self->ring_bytes;
            end = self->lap_end < self->limit ? self->lap_end : self->limit;
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
    size_t callouts = 0;
    int native = json_encode_item(json, item, fallback, &splice_at, &callouts);
    if (clean != NULL) *clean = native == 1 && callouts == 0;
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
    result = PyLong_FromLong(code);
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
    int have = json_item_ids(item, &project, &id, &trace, NULL);
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

#define KIND_START 1
#define KIND_END 2
#define FLAG_END_HAS_TRACE 1

/* call_types(): the wire types of Tracer.call_start / call_end and the start's answer */
static PyTypeObject *start_type, *end_type;
static PyObject *start_res_type, *start_res_kwnames;

/* call_dict_fields(): the fields of the start / end types, for dicts of them. */
enum { F_ANY, F_STR, F_OPT_STR, F_DATETIME, F_OPT_DATETIME, F_STRDICT, F_OPT_STRDICT,
       F_OPT_INT, F_OPT_BOOL };
#define MAX_DICT_FIELDS 32
typedef struct {
    Py_ssize_t n;
    PyObject *names[MAX_DICT_FIELDS];  /* interned, owned */
    int kinds[MAX_DICT_FIELDS];
    uint32_t required, ids;  /* bit masks by field index: must be present; ids (not None) */
    uint32_t kw_mask[4];     /* kwnames tuples for the last sets of present fields */
    PyObject *kw_names[4];
    int kw_next;
} DictFields;
static DictFields dict_fields[2];  /* start, end */
static PyObject *datetime_type;

/* A dict's keys are all exact str (what convert demands of a dict[str, Any] field). */
static int all_str_keys(PyObject *d) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v))
        if (!PyUnicode_CheckExact(k)) return 0;
    return 1;
}

static int dict_value_fits(int kind, PyObject *v) {
    switch (kind) {
        case F_ANY: return 1;
        case F_OPT_STR: if (v == Py_None) return 1; /* fall through */
        case F_STR: return PyUnicode_CheckExact(v);
        case F_OPT_DATETIME: if (v == Py_None) return 1; /* fall through */
        case F_DATETIME: return (PyObject *)Py_TYPE(v) == datetime_type;
        case F_OPT_STRDICT: if (v == Py_None) return 1; /* fall through */
        case F_STRDICT: return PyDict_CheckExact(v) && all_str_keys(v);
        case F_OPT_INT: {
            if (v == Py_None) return 1;
            if (!PyLong_CheckExact(v)) return 0;
            int overflow;
            (void)PyLong_AsLongLongAndOverflow(v, &overflow);
            return !overflow;
        }
        case F_OPT_BOOL: return v == Py_None || PyBool_Check(v);
    }
    return 0;
}

/* The Struct msgspec.convert(d, type, strict=False) makes of a dict whose every key is a
 * field and every value already of its field's type (convert's copy of a dict value
 * aside: the dict itself is used, encoded at once and never handed out). Py_None when the
 * dict is not such a one (convert, on the general path, decides and names what is wrong);
 * NULL with an exception set. */
static PyObject *struct_of_dict(PyObject *d, int is_end) {
    DictFields *f = &dict_fields[is_end];
    PyTypeObject *type = is_end ? end_type : start_type;
    if (f->n == 0 || type == NULL || PyDict_GET_SIZE(d) > f->n) Py_RETURN_NONE;
    PyObject *vals[MAX_DICT_FIELDS];
    uint32_t present = 0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        Py_ssize_t i = 0;
        while (i < f->n && f->names[i] != k) i++;  /* literal keys are the interned names */
        if (i == f->n) {
            if (!PyUnicode_CheckExact(k)) Py_RETURN_NONE;
            for (i = 0; i < f->n; i++) {
                int eq = PyUnicode_Compare(f->names[i], k);
                if (eq == -1 && PyErr_Occurred()) return NULL;
                if (eq == 0) break;
            }
            if (i == f->n) Py_RETURN_NONE;  /* an unknown key: convert ignores it */
        }
        if (!dict_value_fits(f->kinds[i], v)) Py_RETURN_NONE;
        if ((f->ids >> i) & 1 && v == Py_None) Py_RETURN_NONE;
        vals[i] = v;
        present |= 1u << i;
    }
    if ((present & f->required) != f->required || (present & f->ids) != f->ids) Py_RETURN_NONE;
    PyObject *kwnames = NULL;
#ifndef Py_GIL_DISABLED  /* the cache is shared state: without the GIL, a tuple per call */
    for (int c = 0; c < 4; c++)
        if (f->kw_names[c] != NULL && f->kw_mask[c] == present) kwnames = f->kw_names[c];
#endif
    Py_ssize_t n = 0;
    PyObject *args[MAX_DICT_FIELDS];
    for (Py_ssize_t i = 0; i < f->n; i++)
        if ((present >> i) & 1) args[n++] = vals[i];
    if (kwnames == NULL) {
        kwnames = PyTuple_New(n);
        if (kwnames == NULL) return NULL;
        for (Py_ssize_t i = 0, j = 0; i < f->n; i++)
            if ((present >> i) & 1) PyTuple_SET_ITEM(kwnames, j++, Py_NewRef(f->names[i]));
#ifndef Py_GIL_DISABLED
        int c = f->kw_next;
        f->kw_next = (c + 1) % 4;
        Py_XSETREF(f->kw_names[c], Py_NewRef(kwnames));
        f->kw_mask[c] = present;
#endif
    } else {
        Py_INCREF(kwnames);  /* held across the call: a hook run by it may refill the cache */
    }
    PyObject *made = PyObject_Vectorcall((PyObject *)type, args, 0, kwnames);
    Py_DECREF(kwnames);
    return made;
}

/* call_dict_fields(start_fields, end_fields): each a tuple of (name, kind, required, id)
 * per field of the type, in its order; () turns dicts of that type off. */
static PyObject *native_call_dict_fields(PyObject *self, PyObject *args) {
    PyObject *specs[2];
    if (!PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &specs[0], &PyTuple_Type, &specs[1]))
        return NULL;
    if (datetime_type == NULL) {
        PyObject *mod = PyImport_ImportModule("datetime");
        if (mod == NULL) return NULL;
        datetime_type = PyObject_GetAttrString(mod, "datetime");
        Py_DECREF(mod);
        if (datetime_type == NULL) return NULL;
    }
    for (int t = 0; t < 2; t++) {
        Py_ssize_t n = PyTuple_GET_SIZE(specs[t]);
        if (n > MAX_DICT_FIELDS) {
            PyErr_SetString(PyExc_ValueError, "too many fields");
            return NULL;
        }
        DictFields made = {0};
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *name;
            int kind, required, id;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(specs[t], i), "Uipp", &name, &kind,
                                  &required, &id))
                goto fail;
            if (kind < F_ANY || kind > F_OPT_BOOL) {
                PyErr_Format(PyExc_ValueError, "unknown field kind %d", kind);
                goto fail;
            }
            Py_INCREF(name);
            PyUnicode_InternInPlace(&name);
            made.names[made.n++] = name;
            made.kinds[i] = kind;
            if (required) made.required |= 1u << i;
            if (id) made.ids |= 1u << i;
        }
        DictFields *old = &dict_fields[t];
        for (Py_ssize_t i = 0; i < old->n; i++) Py_DECREF(old->names[i]);
        for (int c = 0; c < 4; c++) Py_XDECREF(old->kw_names[c]);
        *old = made;
        continue;
    fail:
        for (Py_ssize_t i = 0; i < made.n; i++) Py_DECREF(made.names[i]);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Tracer.call_start / call_end in one call: an exact start (ids set) or end Struct with a
 * bound project (or a dict struct_of_dict makes one of), put_item's work, and the answer.
 * Returns the CallStartRes (start) or True (end) when the item is written and nothing is
 * left to do (no doorbell, no value went to Python); None when it did nothing (another
 * type, an id missing or not a UUID, the project not bound, a released writer: the
 * general path handles and names it); else put_item's code or (code, bytes), for the
 * caller to settle. */
static PyObject *call_item(RingWriter *self, PyObject *item, int is_end) {
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
    PyObject *project, *id, *trace, *started;
    int have = json_item_ids(item, &project, &id, &trace, &started);
    if (have < 0) return NULL;
    if (!have || project == NULL || id == NULL || id == Py_None || trace == NULL)
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

static PyObject *writer_call_start(RingWriter *self, PyObject *item) {
    return call_item(self, item, 0);
}

static PyObject *writer_call_end(RingWriter *self, PyObject *item) {
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

static PyTypeObject RingWriterType = {
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

/* ---- TracerCalls: Tracer.call_start / call_end without a Python frame ------------------ */

/* The base class of engine.Tracer (where the GIL is not disabled): call_start / call_end
 * call the writer's one-call path (_fast_start / _fast_end, RingWriter.call_start /
 * call_end bound, or None) straight from C, and hand everything that path did not finish
 * to the Python methods _call_start_rest / _call_end_rest(item, done), as the pure-Python
 * base in engine/producer/_tracer.py does. Saves a Python frame per call (~0.1 µs). */
typedef struct {
    PyObject_HEAD
    PyObject *fast_start, *fast_end;  /* NULL: none */
} TracerCalls;

static PyObject *str_fast_failed, *str_start_rest, *str_end_rest;

static int tc_traverse(TracerCalls *self, visitproc visit, void *arg) {
    Py_VISIT(self->fast_start);
    Py_VISIT(self->fast_end);
    return 0;  /* a heap subclass's type is visited by subtype_traverse */
}

static int tc_clear(TracerCalls *self) {
    Py_CLEAR(self->fast_start);
    Py_CLEAR(self->fast_end);
    return 0;
}

static void tc_dealloc(TracerCalls *self) {  /* a subclass's type: subtype_dealloc's */
    PyObject_GC_UnTrack(self);
    tc_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The one argument, positional or by its name. */
static PyObject *tc_arg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                        const char *func, const char *name) {
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs == 1 && nkw == 0) return args[0];
    if (nargs == 0 && nkw == 1 &&
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), name) == 0)
        return args[0];
    PyErr_Format(PyExc_TypeError, "%s() takes exactly one argument (%s)", func, name);
    return NULL;
}

static PyObject *tc_call(TracerCalls *self, PyObject *item, int is_end) {
    PyObject *fast = is_end ? self->fast_end : self->fast_start;
    PyObject *done;
    if (fast == NULL) {
        done = Py_NewRef(Py_None);
    } else {
        Py_INCREF(fast);  /* close() may drop the field while the call runs */
        PyCFunction want = is_end ? (PyCFunction)writer_call_end : (PyCFunction)writer_call_start;
        if (PyCFunction_CheckExact(fast) && PyCFunction_GET_FUNCTION(fast) == want &&
            Py_IS_TYPE(PyCFunction_GET_SELF(fast), &RingWriterType))
            done = call_item((RingWriter *)PyCFunction_GET_SELF(fast), item, is_end);
        else
            done = PyObject_Vectorcall(fast, &item, 1, NULL);
        if (done == NULL) {
            if (PyErr_ExceptionMatches(PyExc_ValueError)) {
                /* _fast_failed(fast, current) raises Closed when a close() released the
                 * writer meanwhile; else the ValueError stands */
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                PyObject *current = is_end ? self->fast_end : self->fast_start;
                PyObject *call_args[3] = {(PyObject *)self, fast, current ? current : Py_None};
                PyObject *ok = PyObject_VectorcallMethod(
                    str_fast_failed, call_args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
                if (ok == NULL) {
                    Py_XDECREF(type);
                    Py_XDECREF(value);
                    Py_XDECREF(tb);
                } else {
                    Py_DECREF(ok);
                    PyErr_Restore(type, value, tb);
                }
            }
            Py_DECREF(fast);
            return NULL;
        }
        Py_DECREF(fast);
        if (is_end ? done == Py_True : (PyObject *)Py_TYPE(done) == start_res_type) {
            if (is_end) {
                Py_DECREF(done);
                Py_RETURN_NONE;
            }
            return done;
        }
    }
    PyObject *call_args[3] = {(PyObject *)self, item, done};
    PyObject *result = PyObject_VectorcallMethod(is_end ? str_end_rest : str_start_rest,
                                                 call_args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                 NULL);
    Py_DECREF(done);
    return result;
}

static PyObject *tc_call_start(TracerCalls *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    PyObject *item = tc_arg(args, nargs, kwnames, "call_start", "start");
    return item == NULL ? NULL : tc_call(self, item, 0);
}

static PyObject *tc_call_end(TracerCalls *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
    PyObject *item = tc_arg(args, nargs, kwnames, "call_end", "end");
    return item == NULL ? NULL : tc_call(self, item, 1);
}

static PyObject *tc_get(TracerCalls *self, void *which) {
    PyObject *v = which ? self->fast_end : self->fast_start;
    return Py_NewRef(v ? v : Py_None);
}

static int tc_set(TracerCalls *self, PyObject *value, void *which) {
    PyObject **field = which ? &self->fast_end : &self->fast_start;
    Py_XSETREF(*field, value == NULL || value == Py_None ? NULL : Py_NewRef(value));
    return 0;
}

static PyMethodDef tc_methods[] = {
    {"call_start", (PyCFunction)(void (*)(void))tc_call_start, METH_FASTCALL | METH_KEYWORDS,
     "call_start($self, start, /)\n--\n\n"
     "Enqueue a call start; a missing ``id`` / ``trace_id`` is made here (the caller's\n"
     "Struct is not changed). Returns both ids, as the server's answer would."},
    {"call_end", (PyCFunction)(void (*)(void))tc_call_end, METH_FASTCALL | METH_KEYWORDS,
     "call_end($self, end, /)\n--\n\n"
     "Enqueue a call end (its start may come before or after, in any process)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tc_getset[] = {
    {"_fast_start", (getter)tc_get, (setter)tc_set,
     "RingWriter.call_start of the claimed slot, or None", NULL},
    {"_fast_end", (getter)tc_get, (setter)tc_set,
     "RingWriter.call_end of the claimed slot, or None", (void *)1},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TracerCallsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine.native._native.TracerCalls",
    .tp_basicsize = sizeof(TracerCalls),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Tracer.call_start / call_end in C (the base of engine.Tracer).",
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)tc_traverse,
    .tp_clear = (inquiry)tc_clear,
    .tp_dealloc = (destructor)tc_dealloc,
    .tp_methods = tc_methods,
    .tp_getset = tc_getset,
};

/* ---- CallHandleBase: tracer.call / @tracer.op's handle, started and ended in C --------- */

/* The base of engine.CallHandle (where TracerCalls is): the fields, and _begin /
 * __enter__ / __exit__ doing what the pure-Python handle in engine/producer/_tracer.py does --
 * ids (a child takes its parent's trace), start time, the start record through the
 * tracer's call_start, the context variable; on exit the end record through call_end. */
typedef struct {
    PyObject_HEAD
    PyObject *id, *trace_id, *parent_id, *op_name, *started_at, *output, *summary, *inputs,
        *attributes, *display_name, *token, *project, *tracer;
} CallHandle;

static PyTypeObject CallHandleType;
static PyObject *current_var, *describe_func, *start_call_kwnames, *end_call_kwnames;

#define CH_FIELDS(X) X(id) X(trace_id) X(parent_id) X(op_name) X(started_at) X(output) \
    X(summary) X(inputs) X(attributes) X(display_name) X(token) X(project) X(tracer)

static int ch_traverse(CallHandle *self, visitproc visit, void *arg) {
#define CH_VISIT(f) Py_VISIT(self->f);
    CH_FIELDS(CH_VISIT)
#undef CH_VISIT
    return 0;
}

static int ch_clear(CallHandle *self) {
#define CH_CLEAR(f) Py_CLEAR(self->f);
    CH_FIELDS(CH_CLEAR)
#undef CH_CLEAR
    return 0;
}

static void ch_dealloc(CallHandle *self) {
    PyObject_GC_UnTrack(self);
    ch_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* CallHandle(tracer, op_name, inputs, attributes, display_name, project) */
static int ch_init(CallHandle *self, PyObject *args, PyObject *kwds) {
    PyObject *tracer, *op_name, *inputs, *attributes, *display_name, *project;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "CallHandle takes positional arguments only");
        return -1;
    }
    if (!PyArg_UnpackTuple(args, "CallHandle", 6, 6, &tracer, &op_name, &inputs, &attributes,
                           &display_name, &project))
        return -1;
    Py_XSETREF(self->tracer, Py_NewRef(tracer));
    Py_XSETREF(self->op_name, Py_NewRef(op_name));
    Py_XSETREF(self->inputs, Py_NewRef(inputs));
    Py_XSETREF(self->attributes, Py_NewRef(attributes));
    Py_XSETREF(self->display_name, Py_NewRef(display_name));
    Py_XSETREF(self->project, Py_NewRef(project));
    Py_XSETREF(self->output, Py_NewRef(Py_None));
    PyObject *summary = PyDict_New();
    if (summary == NULL) return -1;
    Py_XSETREF(self->summary, summary);
    Py_XSETREF(self->id, Py_NewRef(Py_None));
    Py_XSETREF(self->trace_id, Py_NewRef(Py_None));
    Py_XSETREF(self->parent_id, Py_NewRef(Py_None));
    Py_XSETREF(self->started_at, Py_NewRef(Py_None));
    Py_XSETREF(self->token, Py_NewRef(Py_None));
    return 0;
}

/* the tracer's call_start / call_end: from C when it is a TracerCalls */
/* Fields a user deleted (members can be: NULL) raise, as the pure-Python handle's do;
 * checked right before they are read (a hook that ran may have deleted one). */
static int ch_fields_set(CallHandle *self, PyObject *const *fields, const char *const *names,
                         int n) {
    for (int i = 0; i < n; i++) {
        if (fields[i] == NULL) {
            PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%s'",
                         Py_TYPE(self)->tp_name, names[i]);
            return -1;
        }
    }
    return 0;
}

#define OR_NONE(x) ((x) != NULL ? (x) : Py_None)  /* a parent's deleted field: none */

static PyObject *ch_write(CallHandle *self, PyObject *item, int is_end) {
    if (self->tracer == NULL) {
        PyErr_SetString(PyExc_AttributeError, "this call handle has no tracer");
        return NULL;
    }
    if (PyObject_TypeCheck(self->tracer, &TracerCallsType))
        return tc_call((TracerCalls *)self->tracer, item, is_end);
    return PyObject_CallMethod(self->tracer, is_end ? "call_end" : "call_start", "O", item);
}

static PyObject *ch_begin(CallHandle *self, PyObject *unused) {
    if (current_var == NULL || start_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "engine.native._native.call_handle_setup() was not called");
        return NULL;
    }
    PyObject *parent;
    if (PyContextVar_Get(current_var, Py_None, &parent) < 0) return NULL;
    PyObject *call_id = native_uuid7(NULL, NULL), *trace_id, *parent_id;
    if (call_id == NULL) {
        Py_DECREF(parent);
        return NULL;
    }
    if (parent == Py_None || parent == NULL) {
        trace_id = native_uuid7(NULL, NULL);
        parent_id = Py_NewRef(Py_None);
    } else if (PyObject_TypeCheck(parent, &CallHandleType)) {
        trace_id = Py_NewRef(OR_NONE(((CallHandle *)parent)->trace_id));
        parent_id = Py_NewRef(OR_NONE(((CallHandle *)parent)->id));
    } else {  /* a pure-Python handle of another tracer, say */
        trace_id = PyObject_GetAttrString(parent, "trace_id");
        parent_id = trace_id == NULL ? NULL : PyObject_GetAttrString(parent, "id");
    }
    Py_XDECREF(parent);
    if (trace_id == NULL || parent_id == NULL) {
        Py_DECREF(call_id);
        Py_XDECREF(trace_id);
        return NULL;
    }
    Py_XSETREF(self->id, call_id);
    Py_XSETREF(self->trace_id, trace_id);
    Py_XSETREF(self->parent_id, parent_id);
    PyObject *started_at = native_utcnow(NULL, NULL);
    if (started_at == NULL) return NULL;
    Py_XSETREF(self->started_at, started_at);
    static const char *const names[5] = {"_project", "op_name", "display_name", "attributes",
                                         "inputs"};
    PyObject *given[5] = {self->project, self->op_name, self->display_name, self->attributes,
                          self->inputs};
    if (ch_fields_set(self, given, names, 5) < 0) return NULL;
    PyObject *args[9] = {given[0], call_id, given[1], given[2], trace_id, parent_id,
                         started_at, given[3], given[4]};
    for (int i = 0; i < 9; i++) Py_INCREF(args[i]);  /* a hook may change the fields */
    PyObject *start = PyObject_Vectorcall((PyObject *)start_type, args, 0, start_call_kwnames);
    for (int i = 0; i < 9; i++) Py_DECREF(args[i]);
    if (start == NULL) return NULL;
    PyObject *written = ch_write(self, start, 0);
    Py_DECREF(start);
    if (written == NULL) return NULL;
    Py_DECREF(written);
    PyObject *token = PyContextVar_Set(current_var, (PyObject *)self);
    if (token == NULL) return NULL;
    Py_XSETREF(self->token, token);
    return Py_NewRef((PyObject *)self);
}

static PyObject *ch_exit(CallHandle *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__ takes 3 arguments");
        return NULL;
    }
    if (current_var == NULL || end_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "engine.native._native.call_handle_setup() was not called");
        return NULL;
    }
    if (self->token != NULL && self->token != Py_None) {
        PyObject *token = self->token;
        self->token = Py_NewRef(Py_None);
        int bad = PyContextVar_Reset(current_var, token);
        Py_DECREF(token);
        if (bad < 0) return NULL;
    }
    PyObject *exception = args[1] == Py_None ? Py_NewRef(Py_None)
                                             : PyObject_CallOneArg(describe_func, args[1]);
    if (exception == NULL) return NULL;
    PyObject *ended_at = native_utcnow(NULL, NULL);
    if (ended_at == NULL) {
        Py_DECREF(exception);
        return NULL;
    }
    static const char *const names[6] = {"_project", "id", "trace_id", "started_at", "output",
                                         "summary"};
    PyObject *given[6] = {self->project, self->id, self->trace_id, self->started_at,
                          self->output, self->summary};
    if (ch_fields_set(self, given, names, 6) < 0) {  /* (describe_func may have run) */
        Py_DECREF(ended_at);
        Py_DECREF(exception);
        return NULL;
    }
    PyObject *fields[8] = {given[0], given[1], given[2], given[3], ended_at, exception,
                           given[4], given[5]};
    for (int i = 0; i < 8; i++) Py_INCREF(fields[i]);
    PyObject *end = PyObject_Vectorcall((PyObject *)end_type, fields, 0, end_call_kwnames);
    for (int i = 0; i < 8; i++) Py_DECREF(fields[i]);
    Py_DECREF(ended_at);
    Py_DECREF(exception);
    if (end == NULL) return NULL;
    PyObject *written = ch_write(self, end, 1);
    Py_DECREF(end);
    if (written == NULL) return NULL;
    Py_DECREF(written);
    Py_RETURN_NONE;
}

static PyMethodDef ch_methods[] = {
    {"_begin", (PyCFunction)ch_begin, METH_NOARGS,
     "Start the call: its ids (a child takes its parent's trace), the start time, the start "
     "record, and this call as the context's current one."},
    {"__enter__", (PyCFunction)ch_begin, METH_NOARGS, "Start the call (see _begin)."},
    {"__exit__", (PyCFunction)(void (*)(void))ch_exit, METH_FASTCALL,
     "End the call: the end record (output, summary, the exception if one ended it)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef ch_members[] = {
    {"id", T_OBJECT, offsetof(CallHandle, id), 0, "the call id (set when it starts)"},
    {"trace_id", T_OBJECT, offsetof(CallHandle, trace_id), 0, NULL},
    {"parent_id", T_OBJECT, offsetof(CallHandle, parent_id), 0, NULL},
    {"op_name", T_OBJECT, offsetof(CallHandle, op_name), 0, NULL},
    {"started_at", T_OBJECT, offsetof(CallHandle, started_at), 0, NULL},
    {"output", T_OBJECT, offsetof(CallHandle, output), 0, "what the call returned: set it"},
    {"summary", T_OBJECT, offsetof(CallHandle, summary), 0, "the call's summary: set it"},
    {"inputs", T_OBJECT, offsetof(CallHandle, inputs), 0, NULL},
    {"attributes", T_OBJECT, offsetof(CallHandle, attributes), 0, NULL},
    {"display_name", T_OBJECT, offsetof(CallHandle, display_name), 0, NULL},
    {"_token", T_OBJECT, offsetof(CallHandle, token), 0, NULL},
    {"_project", T_OBJECT, offsetof(CallHandle, project), 0, NULL},
    {"_tracer", T_OBJECT, offsetof(CallHandle, tracer), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CallHandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine.native._native.CallHandleBase",
    .tp_basicsize = sizeof(CallHandle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "tracer.call's handle in C (the base of engine.CallHandle).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ch_init,
    .tp_traverse = (traverseproc)ch_traverse,
    .tp_clear = (inquiry)ch_clear,
    .tp_dealloc = (destructor)ch_dealloc,
    .tp_methods = ch_methods,
    .tp_members = ch_members,
};

/* call_handle_setup(current_var, describe): the context variable of the current call and
 * the function that turns an exception into the end's text. */
static PyObject *native_call_handle_setup(PyObject *self, PyObject *args) {
    PyObject *var, *describe;
    if (!PyArg_ParseTuple(args, "OO", &var, &describe)) return NULL;
    if (!PyContextVar_CheckExact(var) || !PyCallable_Check(describe)) {
        PyErr_SetString(PyExc_TypeError, "call_handle_setup(ContextVar, callable)");
        return NULL;
    }
    PyObject *start_names = Py_BuildValue("(sssssssss)", "project_id", "id", "op_name",
                                          "display_name", "trace_id", "parent_id",
                                          "started_at", "attributes", "inputs");
    PyObject *end_names = Py_BuildValue("(ssssssss)", "project_id", "id", "trace_id",
                                        "started_at", "ended_at", "exception", "output",
                                        "summary");
    if (start_names == NULL || end_names == NULL) {
        Py_XDECREF(start_names);
        Py_XDECREF(end_names);
        return NULL;
    }
    for (int t = 0; t < 2; t++) {  /* interned, as msgspec's field names are */
        PyObject *names = t ? end_names : start_names;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++)
            PyUnicode_InternInPlace(&PyTuple_GET_ITEM(names, i));
    }
    Py_XSETREF(start_call_kwnames, start_names);
    Py_XSETREF(end_call_kwnames, end_names);
    Py_INCREF(var);
    Py_INCREF(describe);
    Py_XSETREF(current_var, var);
    Py_XSETREF(describe_func, describe);
    Py_RETURN_NONE;
}

/* ---- the consumer side: parse records out of the mapping ------------------------------ */

#define KIND_SPLICED 16  /* never in a ring: a start and its end, parsed as one record */

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

static PyObject *new_record(PyTypeObject *type, PyObject *items[10]) {
    for (int i = 0; i < 10; i++) {
        if (items[i] == NULL) {
            for (int j = 0; j < 10; j++) Py_XDECREF(items[j]);
            return NULL;
        }
    }
    PyObject *record = type->tp_alloc(type, 10);
    if (record == NULL) {
        for (int i = 0; i < 10; i++) Py_DECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < 10; i++) PyTuple_SET_ITEM(record, i, items[i]);
    return record;
}

static int append_end(PyObject *ends, unsigned long long end_pos) {
    if (ends == Py_None) return 0;
    PyObject *value = PyLong_FromUnsignedLongLong(end_pos);
    if (value == NULL) return -1;
    int rc = PyList_Append(ends, value);
    Py_DECREF(value);
    return rc;
}

/* parse(mapping, start, stop, slot, position, out, limit, max_bytes, record_type, ends,
 *       splice_max_bytes) -> used
 * Appends the whole records of mapping[start:stop] that start within max_bytes, until
 * len(out) == limit; stops at padding, at a tail shorter than a header and at a record cut
 * by stop. Returns the bytes used (0: the caller tells those cases apart). ``ends`` (a list,
 * or None) gets the end position of every ring record consumed. With splice_max_bytes > 0
 * a start directly followed by its end is appended as ONE record of kind KIND_SPLICED: the
 * complete item as payload, the end's end position, flags and the start's ids and
 * enqueue time; its aux is the end position of the start record. Adjacent records only,
 * so releasing up to any record's end never frees a start whose item is still unsent. */
static PyObject *native_parse(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "parse takes 11 arguments");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), stop = PyLong_AsSsize_t(args[2]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[6]), max_bytes = PyLong_AsSsize_t(args[7]);
    Py_ssize_t splice_max = PyLong_AsSsize_t(args[10]);
    unsigned long long position = PyLong_AsUnsignedLongLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    PyObject *slot = args[3], *out = args[5], *ends = args[9];
    PyTypeObject *record_type = (PyTypeObject *)args[8];
    if (!PyList_Check(out) || !PyType_Check(args[8]) ||
        !PyType_IsSubtype(record_type, &PyTuple_Type) || (ends != Py_None && !PyList_Check(ends))) {
        PyErr_SetString(PyExc_TypeError,
                        "parse: out and ends must be lists, record_type a tuple type");
        return NULL;
    }
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
        int pair = splice_max > 0 && raw_record_at(chunk, chunk_len, r.next, &partner) &&
                   splices(&r, &partner, splice_max);
        Py_ssize_t next = pair ? partner.next : r.next;
        PyObject *project;
        /* consecutive records mostly share a project: one object for all of them */
        if (last_project != NULL && PyBytes_GET_SIZE(last_project) == r.project_len &&
            memcmp(PyBytes_AS_STRING(last_project), r.project, r.project_len) == 0) {
            project = last_project;
            Py_INCREF(project);
        } else {
            project = PyBytes_FromStringAndSize((const char *)r.project, r.project_len);
            last_project = project;
        }
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
        PyObject *record = new_record(record_type, items);
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

/* ---- module --------------------------------------------------------------------------- */

/* call_types(start_type, end_type, start_res_type): what RingWriter.call_start / call_end
 * take and answer (the wire's StartedCallSchemaForInsert, EndedCallSchemaForInsert and
 * CallStartRes, whose id and trace_id are keyword arguments) */
static PyObject *native_call_types(PyObject *self, PyObject *args) {
    PyObject *start, *end, *res;
    if (!PyArg_ParseTuple(args, "O!O!O!:call_types", &PyType_Type, &start, &PyType_Type, &end,
                          &PyType_Type, &res))
        return NULL;
    PyObject *kwnames = Py_BuildValue("(ss)", "id", "trace_id");
    if (kwnames == NULL) return NULL;
    Py_XSETREF(start_res_kwnames, kwnames);
    Py_INCREF(start);
    Py_INCREF(end);
    Py_INCREF(res);
    Py_XSETREF(start_type, (PyTypeObject *)start);
    Py_XSETREF(end_type, (PyTypeObject *)end);
    Py_XSETREF(start_res_type, res);
    Py_RETURN_NONE;
}

static PyMethodDef native_methods[] = {
    {"uuid7", native_uuid7, METH_NOARGS, "A new UUIDv7 as lowercase 8-4-4-4-12 text."},
    {"uuid7_bytes", native_uuid7_bytes, METH_NOARGS, "A new UUIDv7 as (text, 16 raw bytes)."},
    {"uuid_bytes", native_uuid_bytes, METH_O, "16 raw bytes of a UUID text; ValueError if not one."},
    {"struct_plan", native_struct_plan, METH_VARARGS,
     "struct_plan(type, names, descriptors, defaults, splice_name, unset): let the native "
     "encoder write this Struct type (see engine/native/_native_json.c)."},
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
    {"call_handle_setup", native_call_handle_setup, METH_VARARGS,
     "call_handle_setup(current_var, describe): what CallHandleBase needs (the ContextVar "
     "of the current call; exception -> text)."},
    {"call_dict_fields", native_call_dict_fields, METH_VARARGS,
     "call_dict_fields(start_fields, end_fields): (name, kind, required, id) per field, so "
     "RingWriter.call_start / call_end take dicts of those types too."},
    {"parse", (PyCFunction)(void (*)(void))native_parse, METH_FASTCALL,
     "parse(mapping, start, stop, slot, position, out, limit, max_bytes, record_type, ends, "
     "splice_max_bytes) -> used"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "engine.native._native",
    "Hot loops of the ring and the producer (optional; pure-Python fallbacks exist).", -1,
    native_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    init_hex_table();
    if (rng_seed() < 0 || json_init() < 0) return NULL;
    if (PyType_Ready(&RingWriterType) < 0) return NULL;
#ifndef Py_GIL_DISABLED
    str_fast_failed = PyUnicode_InternFromString("_fast_failed");
    str_start_rest = PyUnicode_InternFromString("_call_start_rest");
    str_end_rest = PyUnicode_InternFromString("_call_end_rest");
    if (str_fast_failed == NULL || str_start_rest == NULL || str_end_rest == NULL) return NULL;
    if (PyType_Ready(&TracerCallsType) < 0) return NULL;
    if (PyType_Ready(&CallHandleType) < 0) return NULL;
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
        PyModule_AddIntConstant(module, "KIND_SPLICED", KIND_SPLICED) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
