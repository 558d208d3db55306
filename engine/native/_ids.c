/* engine.native._native: ids. uuid7 / uuid7_bytes / uuid_bytes (engine/wire/_codec.py falls
 * back to Python for them), and the id cache the ring writer reads a header's ids from. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include "_ids.h"

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

PyObject *native_reseed(PyObject *self, PyObject *unused) {
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

/* the id cache's entries (see _ids.h) */
#ifndef Py_GIL_DISABLED
PyObject *id_cache_text[ID_CACHE];
uint8_t id_cache_raw[ID_CACHE][16];
int id_cache_next;
#endif

PyObject *native_uuid7(PyObject *self, PyObject *unused) {
    uint8_t raw[16];
    make_uuid7(raw);
    PyObject *text = uuid_text_of(raw);
    if (text != NULL) id_cache_put(text, raw);
    return text;
}

PyObject *native_uuid7_bytes(PyObject *self, PyObject *unused) {
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

int parse_uuid(const char *s, Py_ssize_t n, uint8_t raw[16]) {
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

PyObject *native_uuid_bytes(PyObject *self, PyObject *text) {
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

int ids_init(void) {
    init_hex_table();
    return rng_seed();
}
