/* engine.native._native: ids -- UUIDv7 without Python big-int arithmetic, UUID text to 16
 * bytes, and a cache of the last ids made or parsed (see _ids.c). */
#ifndef ENGINE_NATIVE_IDS_H
#define ENGINE_NATIVE_IDS_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

int ids_init(void);  /* at import: the hex table, the generator's seed */

/* The last ids made or parsed, by object: a call's start and end name the same id and
 * trace objects, made by uuid7() just before, so their headers skip parsing the text.
 * The entries hold their str (immutable), so a pointer match is a content match. Inline:
 * the ring writer looks up both ids of every record. */
#define ID_CACHE 8
#ifndef Py_GIL_DISABLED
extern PyObject *id_cache_text[ID_CACHE];
extern uint8_t id_cache_raw[ID_CACHE][16];
extern int id_cache_next;
#endif

static inline void id_cache_put(PyObject *text, const uint8_t raw[16]) {
#ifndef Py_GIL_DISABLED
    int k = id_cache_next;
    id_cache_next = (k + 1) % ID_CACHE;
    Py_INCREF(text);
    Py_XSETREF(id_cache_text[k], text);
    memcpy(id_cache_raw[k], raw, 16);
#endif
}

static inline int id_cache_get(PyObject *text, uint8_t raw[16]) {
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

/* Canonical 8-4-4-4-12 text (either case) or 32 bare hex digits -> 16 bytes; -1 if neither. */
int parse_uuid(const char *s, Py_ssize_t n, uint8_t raw[16]);

PyObject *native_reseed(PyObject *self, PyObject *unused);
PyObject *native_uuid7(PyObject *self, PyObject *unused);
PyObject *native_uuid7_bytes(PyObject *self, PyObject *unused);
PyObject *native_uuid_bytes(PyObject *self, PyObject *text);

#endif
