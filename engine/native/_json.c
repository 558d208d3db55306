/* engine.native._native, part 2: the producer's JSON encoder.
 *
 * Encoding the item is most of what a traced call costs the eval process, and most of that
 * is strings: msgspec's encoder checks them a byte at a time. This encoder writes exactly
 * msgspec's bytes (tests/wire/test_native_json.py holds it to that, property-based) for
 * the types a traced call is made of, checking strings 16 bytes at a time (SSE2; 8 at a
 * time with plain 64-bit arithmetic elsewhere):
 *
 *   str, dict with str keys, list, tuple, int (64-bit), float without an exponent in its
 *   shortest form, NaN/Inf (null), bool, None, datetime naive or in UTC, and the Struct
 *   types registered with struct_plan() (the wire insert schemas).
 *
 * Every other value, at any depth, is handed to msgspec (the caller's encoder.encode):
 * its enc_hook, errors and formats stay msgspec's own, except a NaN/inf Decimal, written
 * null (msgspec would write NaN, not JSON). A dict with a key that is not an exact str and a
 * dict subclass go to msgspec whole, so nothing in them is encoded twice, after
 * _lossy.unique_keys made keys msgspec writes as the same text one and wrote what weave
 * stores otherwise (bool and float keys, plain enum members) as weave does; a plain enum
 * member met here goes through it too (msgspec: its value; weave 0.54: its repr). NaN/inf
 * and bytes-like values met on the way are counted (take_counts); engine/wire/_lossy.py
 * counts the same ones without C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <structmember.h>  /* PyMemberDef (in Python.h itself from 3.12) */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "_json.h"
#include "_scan.h"

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX 16
#endif

/* ---- output buffer -------------------------------------------------------------------- */

static int jbuf_grow(JBuf *b, size_t need) {
    size_t want = b->len + need;
    if (want <= b->cap && !b->borrowed) return 0;
    size_t cap = b->borrowed ? 8192 : (b->cap ? b->cap : 8192);
    while (cap < want) cap *= 2;
    char *p;
    if (b->borrowed) {
        p = PyMem_Malloc(cap);
        if (p != NULL) memcpy(p, b->p, b->len);
    } else {
        p = PyMem_Realloc(b->p, cap);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    b->borrowed = 0;
    return 0;
}

#define PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#define PREFETCH_AHEAD 4  /* list items loaded ahead of the one being encoded */
/* A value's first lines, before its header says what and how long it is: a string's text
 * follows its header, and the objects of one payload, built one after the other, tend to
 * lie side by side. Data not touched since it was built costs ~5% less per call. */
#define PREFETCH_OBJECT(p)                                                       \
    do {                                                                         \
        const char *o_ = (const char *)(p);                                      \
        PREFETCH(o_);                                                            \
        PREFETCH(o_ + 64);                                                       \
        PREFETCH(o_ + 128);                                                      \
        PREFETCH(o_ + 192);                                                      \
    } while (0)

/* Start loading what encoding obj will read next: a string's text, a dict's entries, a
 * list's items. Called on an object whose header was prefetched earlier, so reading its
 * type rarely waits; this is what turns a tree of cold objects into parallel misses. */
static inline void prefetch_inner(PyObject *obj) {
    PyTypeObject *type = Py_TYPE(obj);
    if (type == &PyUnicode_Type) {
        if (PyUnicode_IS_COMPACT_ASCII(obj)) {
            const char *s = (const char *)PyUnicode_DATA(obj);
            Py_ssize_t n = PyUnicode_GET_LENGTH(obj);
            for (Py_ssize_t at = 0; at < n && at < 512; at += 64) PREFETCH(s + at);
        }
    } else if (type == &PyDict_Type) {
        const char *keys = (const char *)((PyDictObject *)obj)->ma_keys;
        PREFETCH(keys);
        PREFETCH(keys + 64);
        PREFETCH(keys + 128);
    } else if (type == &PyList_Type) {
        PREFETCH(((PyListObject *)obj)->ob_item);
    }
}

#define ENSURE(b, n) \
    if ((b)->cap - (b)->len < (size_t)(n) && jbuf_grow((b), (size_t)(n)) < 0) return -1

static inline int put_bytes(JBuf *b, const char *s, size_t n) {
    ENSURE(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static inline int put_char(JBuf *b, char c) {
    ENSURE(b, 1);
    b->p[b->len++] = c;
    return 0;
}

void jbuf_free(JBuf *b) {
    if (!b->borrowed) PyMem_Free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->borrowed = 0;
}

/* ---- strings -------------------------------------------------------------------------- */

/* msgspec's table: the escape letter for each byte, 0 where none is needed */
static char ESCAPE[256];
static const char HEXDIGITS[] = "0123456789abcdef";

static void init_escape_table(void) {
    for (int c = 0; c < 0x20; c++) ESCAPE[c] = 'u';
    ESCAPE['\b'] = 'b';
    ESCAPE['\t'] = 't';
    ESCAPE['\n'] = 'n';
    ESCAPE['\f'] = 'f';
    ESCAPE['\r'] = 'r';
    ESCAPE['"'] = '"';
    ESCAPE['\\'] = '\\';
}

#if !defined(__SSE2__)
/* any byte < 0x20, == '"' or == '\\' in x (exact as a yes/no answer) */
static inline int swar_needs_escape(uint64_t x) {
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t ctl = (x - ones * 0x20) & ~x & high;
    uint64_t q = x ^ (ones * '"');
    uint64_t bs = x ^ (ones * '\\');
    q = (q - ones) & ~q & high;
    bs = (bs - ones) & ~bs & high;
    return (ctl | q | bs) != 0;
}
#endif

/* Room kept past a string's end: the last block of a string is checked, and stored, 16
 * bytes at a time (the bytes past its end are overwritten by what follows). */
#define TAIL_SLACK 16

static int put_cstr(JBuf *b, const char *s, Py_ssize_t n) {
    ENSURE(b, (size_t)n + 2 + TAIL_SLACK);
    const char *end = s + n;
    char *out = b->p + b->len;
    *out++ = '"';
    for (Py_ssize_t ahead = 64; ahead < n && ahead <= 512; ahead += 64) PREFETCH(s + ahead);
    for (;;) {
        /* invariant: the buffer has room for the rest of the input, the closing quote and
         * TAIL_SLACK */
#if defined(__SSE2__)
        const __m128i below = _mm_set1_epi8(0x1F), quote = _mm_set1_epi8('"'),
                      slash = _mm_set1_epi8('\\');
        while (end - s >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)s);
            __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(v, below), v),
                                       _mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                    _mm_cmpeq_epi8(v, slash)));
            int mask = _mm_movemask_epi8(hit);
            _mm_storeu_si128((__m128i *)out, v);
            if (mask) {
                int k = __builtin_ctz((unsigned)mask);
                out += k;
                s += k;
                break;
            }
            out += 16;
            s += 16;
        }
        /* The last 1..15 bytes in one block too, when loading 16 bytes from s stays in its
         * page (the bytes past the end are read, never used; a page can't fault, though
         * AddressSanitizer or valgrind would report the read). Keys and short values are
         * mostly this case. */
        Py_ssize_t rest = end - s;
        if (rest > 0 && rest < 16 && ((uintptr_t)s & 4095) <= 4096 - 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)s);
            __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(v, below), v),
                                       _mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                    _mm_cmpeq_epi8(v, slash)));
            unsigned mask = (unsigned)_mm_movemask_epi8(hit) & ((1u << rest) - 1u);
            _mm_storeu_si128((__m128i *)out, v);
            int k = mask ? __builtin_ctz(mask) : (int)rest;
            out += k;
            s += k;
        }
#else
        while (end - s >= 8) {
            uint64_t x;
            memcpy(&x, s, 8);
            if (swar_needs_escape(x)) break;
            memcpy(out, &x, 8);
            out += 8;
            s += 8;
        }
#endif
        while (s < end && !ESCAPE[(uint8_t)*s]) *out++ = *s++;
        if (s == end) break;
        unsigned char c = (unsigned char)*s++;
        b->len = (size_t)(out - b->p);
        ENSURE(b, (size_t)(end - s) + 8 + TAIL_SLACK);
        out = b->p + b->len;
        char e = ESCAPE[c];
        *out++ = '\\';
        *out++ = e;
        if (e == 'u') {
            *out++ = '0';
            *out++ = '0';
            *out++ = HEXDIGITS[c >> 4];
            *out++ = HEXDIGITS[c & 0xF];
        }
    }
    *out++ = '"';
    b->len = (size_t)(out - b->p);
    return 0;
}

static int put_str(JBuf *b, PyObject *obj) {
    Py_ssize_t n;
    const char *s;
    if (PyUnicode_IS_COMPACT_ASCII(obj)) {
        s = (const char *)PyUnicode_DATA(obj);
        n = PyUnicode_GET_LENGTH(obj);
    } else {
        s = PyUnicode_AsUTF8AndSize(obj, &n);  /* msgspec's call, so msgspec's error */
        if (s == NULL) return -1;
    }
    return put_cstr(b, s, n);
}

/* ---- scalars -------------------------------------------------------------------------- */

static int put_i64(JBuf *b, long long v) {
    ENSURE(b, 21);
    char tmp[21];
    int i = 21;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) tmp[--i] = '-';
    memcpy(b->p + b->len, tmp + i, (size_t)(21 - i));
    b->len += (size_t)(21 - i);
    return 0;
}

static inline void two(char *p, int v) {
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

/* "YYYY-MM-DDTHH:MM:SS[.ffffff][Z]", as msgspec writes a naive or a UTC datetime */
static int put_datetime(JBuf *b, PyObject *obj, int utc) {
    ENSURE(b, 30);
    char *p = b->p + b->len;
    int year = PyDateTime_GET_YEAR(obj), us = PyDateTime_DATE_GET_MICROSECOND(obj);
    p[0] = '"';
    p[1] = (char)('0' + year / 1000);
    p[2] = (char)('0' + year / 100 % 10);
    two(p + 3, year % 100);
    p[5] = '-';
    two(p + 6, PyDateTime_GET_MONTH(obj));
    p[8] = '-';
    two(p + 9, PyDateTime_GET_DAY(obj));
    p[11] = 'T';
    two(p + 12, PyDateTime_DATE_GET_HOUR(obj));
    p[14] = ':';
    two(p + 15, PyDateTime_DATE_GET_MINUTE(obj));
    p[17] = ':';
    two(p + 18, PyDateTime_DATE_GET_SECOND(obj));
    int n = 20;
    if (us) {
        p[n++] = '.';
        for (int k = 5, d = us; k >= 0; k--, d /= 10) p[n + k] = (char)('0' + d % 10);
        n += 6;
    }
    if (utc) p[n++] = 'Z';
    p[n++] = '"';
    b->len += (size_t)n;
    return 0;
}

/* ---- the encoder ---------------------------------------------------------------------- */

typedef struct {
    Py_ssize_t nfields, splice_index;
    Py_ssize_t project_index, id_index, trace_index;  /* the header's fields, -1 if absent */
    Py_ssize_t started_index;  /* started_at (an end's flags), -1 if absent */
    Py_ssize_t ended_index;    /* ended_at, -1 if absent */
    char **keys;            /* '"name":' for each field, as encoded */
    size_t *key_lens;
    Py_ssize_t *offsets;    /* of each field's slot in an instance */
    PyObject **defaults;    /* omitted when the value IS this object; NULL: always written */
} Plan;

static PyObject *plans;     /* type -> capsule(Plan) */
/* The last types planned, looked up by pointer before the dict (and a capsule's name
 * check): the plans dict keeps each type and its Plan alive for good. */
#define PLAN_CACHE 8
static PyTypeObject *cached_types[PLAN_CACHE];
static const Plan *cached_plans[PLAN_CACHE];
static PyObject *unset;     /* msgspec.UNSET: a field holding it is left out */

typedef struct {
    JBuf *b;
    PyObject *fallback;     /* the caller's encoder.encode, for every other value */
    size_t callouts;        /* times fallback was called: Python code may have run */
    size_t noted;           /* values written in another form (counted in noted_counts) */
    int depth;              /* containers of a field's value entered (the item's are not) */
    int max_depth;          /* refused past it (MAX_VALUE_DEPTH; 0: no limit) */
} Ctx;

static int json_too_deep(void) {
    PyErr_Format(PyExc_ValueError, "a value is nested deeper than %d levels", MAX_VALUE_DEPTH);
    return -1;
}

/* JSON text msgspec wrote for a value at ctx's depth: within the levels left */
static int check_levels(Ctx *ctx, const char *p, size_t n) {
    if (ctx->max_depth && json_nests_deeper(p, p + n, ctx->max_depth - ctx->depth))
        return json_too_deep();
    return 0;
}

/* Values written in another form since take_counts() last ran in this thread: NaN/inf as
 * null, bytes-like as base64 (msgspec's form), values of a key msgspec would write twice
 * dropped (put_unique); the producer adds them to its slot's counters after each
 * write, or drops them with an item not written. Per thread: threads writing at once (the
 * GIL passes between a write and its settling) keep their own. */
enum { NOTED_NONFINITE, NOTED_BYTES, NOTED_DUPLICATE_KEY, NOTED_KINDS };
static _Thread_local Py_ssize_t noted_counts[NOTED_KINDS];
static PyObject *decimal_type;  /* decimal.Decimal: a NaN/inf one is written null */
static PyObject *raw_type;      /* msgspec.Raw: JSON text msgspec checked, written as it is */
static PyObject *enum_meta;     /* enum.EnumMeta: the type of an enum class */

static inline void note(Ctx *ctx, int kind) {
    noted_counts[kind]++;
    ctx->noted++;
}

static int put_value(Ctx *ctx, PyObject *obj);

static int put_fallback(Ctx *ctx, PyObject *obj) {
    /* Python code may run (a hook may even write to the ring we borrowed space in) */
    if (ctx->b->borrowed && jbuf_grow(ctx->b, 0) < 0) return -1;
    ctx->callouts++;
    PyObject *bytes = PyObject_CallOneArg(ctx->fallback, obj);
    if (bytes == NULL) return -1;
    if (!PyBytes_Check(bytes)) {
        Py_DECREF(bytes);
        PyErr_SetString(PyExc_TypeError, "the fallback encoder must return bytes");
        return -1;
    }
    size_t n = (size_t)PyBytes_GET_SIZE(bytes);
    int r = check_levels(ctx, PyBytes_AS_STRING(bytes), n);
    if (r == 0) r = put_bytes(ctx->b, PyBytes_AS_STRING(bytes), n);
    Py_DECREF(bytes);
    return r;
}

static PyObject *unique_keys;  /* engine.wire._lossy.unique_keys, imported at first use */

/* A dict with a key that is not an exact str or a dict subclass, written by msgspec whole
 * once the entries whose keys it would write as the same text (1 and "1") are made one,
 * or a plain enum member: unique_keys gives (the value itself when it is written as it is,
 * or what is written instead; the values dropped), counted here. */
static int put_unique(Ctx *ctx, PyObject *obj) {
    if (unique_keys == NULL) {
        PyObject *lossy = PyImport_ImportModule("engine.wire._lossy");
        if (lossy == NULL) return -1;
        unique_keys = PyObject_GetAttrString(lossy, "unique_keys");
        Py_DECREF(lossy);
        if (unique_keys == NULL) return -1;
    }
    if (ctx->b->borrowed && jbuf_grow(ctx->b, 0) < 0) return -1;
    ctx->callouts++;
    PyObject *result = PyObject_CallFunction(unique_keys, "Oi", obj, MAX_VALUE_DEPTH);
    if (result == NULL) return -1;
    Py_ssize_t dropped;
    PyObject *merged;
    if (!PyArg_ParseTuple(result, "On", &merged, &dropped)) {
        Py_DECREF(result);
        return -1;
    }
    if (dropped > 0) {
        noted_counts[NOTED_DUPLICATE_KEY] += dropped;
        ctx->noted += (size_t)dropped;
    }
    int r = put_fallback(ctx, merged);
    Py_DECREF(result);
    return r;
}

static const double POW10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};

/* x as its shortest round-trip decimal, when that is m / 10^k with |m| < 10^15 and k <= 9
 * (0.7, 0.85, 1234.5: what traced calls carry): 1 written, 0 not such a number.
 * Why it is the shortest: m / 10^k is computed correctly rounded, so the check proves the
 * text reads back as x; no text with fewer decimals does (the smaller k were tried), and
 * at 15 significant digits or fewer two decimals never read back as the same double. */
static int put_short_float(JBuf *b, double x) {
    double ax = fabs(x);
    if (!(ax >= 1e-4 && ax < 1e15)) return 0;
    for (int k = 0; k <= 9; k++) {
        double scaled = ax * POW10[k];
        if (scaled >= 1e15) return 0;
        double m = nearbyint(scaled);
        if (m / POW10[k] != ax) continue;
        unsigned long long u = (unsigned long long)m;
        if (k > 0 && u % 10 == 0) return 0;  /* a smaller k missed it by rounding: not sure */
        char digits[24];
        int n = 0;
        do {
            digits[n++] = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        while (n <= k) digits[n++] = '0';  /* at least one digit before the point */
        ENSURE(b, 32);
        char *p = b->p + b->len;
        if (x < 0) *p++ = '-';
        for (int i = n - 1; i >= k; i--) *p++ = digits[i];
        *p++ = '.';
        if (k == 0) *p++ = '0';
        for (int i = k - 1; i >= 0; i--) *p++ = digits[i];
        b->len = (size_t)(p - b->p);
        return 1;
    }
    return 0;
}

static int put_float(Ctx *ctx, PyObject *obj) {
    double x = PyFloat_AS_DOUBLE(obj);
    if (!isfinite(x)) {
        note(ctx, NOTED_NONFINITE);
        return put_bytes(ctx->b, "null", 4);
    }
    if (x == 0.0) return signbit(x) ? put_bytes(ctx->b, "-0.0", 4) : put_bytes(ctx->b, "0.0", 3);
    int done = put_short_float(ctx->b, x);
    if (done) return done < 0 ? -1 : 0;
    return put_fallback(ctx, obj);  /* msgspec's own shortest form */
}

/* an entry of a dict being encoded: a value that needs Python code (put_fallback) ends
 * the snapshot, and the rest is read from the dict itself, as msgspec would see it */
static int put_entry(Ctx *ctx, PyObject *key, PyObject *val) {
    Py_INCREF(key);
    Py_INCREF(val);
    int r = put_str(ctx->b, key);
    if (r == 0) r = put_char(ctx->b, ':');
    if (r == 0) r = put_value(ctx, val);
    if (r == 0) r = put_char(ctx->b, ',');
    Py_DECREF(key);
    Py_DECREF(val);
    return r;
}

/* the rest of a dict from pos, read live: after Python code ran, or past the snapshot */
static int put_entries_live(Ctx *ctx, PyObject *obj, Py_ssize_t pos) {
    PyObject *key, *val;
    while (PyDict_Next(obj, &pos, &key, &val)) {
        if (!PyUnicode_CheckExact(key)) {  /* only a value's enc_hook can have put it there */
            PyErr_SetString(PyExc_RuntimeError, "dict changed size during encoding");
            return -1;
        }
        if (put_entry(ctx, key, val) < 0) return -1;
    }
    return 0;
}

#define DICT_SNAPSHOT 16  /* entries read in the key check and encoded from there */

static int put_dict(Ctx *ctx, PyObject *obj) {
    Py_ssize_t pos = 0, n = 0;
    PyObject *key, *val;
    PyObject *keys[DICT_SNAPSHOT], *vals[DICT_SNAPSHOT];
    Py_ssize_t after[DICT_SNAPSHOT];  /* the iteration position after each entry */
    /* One pass checks the keys, keeps the first entries and starts loading every value:
     * traced data is often cold (not touched since it was built), and misses taken
     * together cost about one. No Python code runs until an entry needs it. */
    while (PyDict_Next(obj, &pos, &key, &val)) {
        if (!PyUnicode_CheckExact(key)) {  /* msgspec's whole: its levels counted from ours */
            ctx->depth--;
            int r = put_unique(ctx, obj);
            ctx->depth++;
            return r;
        }
        PREFETCH_OBJECT(val);
        if (n < DICT_SNAPSHOT) {
            keys[n] = key;
            vals[n] = val;
            after[n] = pos;
        }
        n++;
    }
    if (n == 0) return put_bytes(ctx->b, "{}", 2);
    if (put_char(ctx->b, '{') < 0) return -1;
    if (Py_EnterRecursiveCall(" while serializing an object")) return -1;
    int status = -1;
    Py_ssize_t kept = n < DICT_SNAPSHOT ? n : DICT_SNAPSHOT;
    /* the values' headers were loaded together; now what each value points to */
    for (Py_ssize_t i = 0; i < kept; i++) prefetch_inner(vals[i]);
    size_t callouts = ctx->callouts;
    for (Py_ssize_t i = 0; i < kept; i++) {
        if (ctx->callouts != callouts) {  /* Python ran: the dict may have changed */
            if (put_entries_live(ctx, obj, after[i - 1]) < 0) goto done;
            goto close;
        }
        if (put_entry(ctx, keys[i], vals[i]) < 0) goto done;
    }
    if (n > kept && put_entries_live(ctx, obj, after[kept - 1]) < 0) goto done;
close:
    ctx->b->p[ctx->b->len - 1] = '}';  /* over the last comma */
    status = 0;
done:
    Py_LeaveRecursiveCall();
    return status;
}

static int put_sequence(Ctx *ctx, PyObject *obj, int is_list) {
    Py_ssize_t n = is_list ? PyList_GET_SIZE(obj) : PyTuple_GET_SIZE(obj);
    if (n == 0) return put_bytes(ctx->b, "[]", 2);
    if (put_char(ctx->b, '[') < 0) return -1;
    if (Py_EnterRecursiveCall(" while serializing an object")) return -1;
    int status = -1;
    PyObject **items = is_list ? ((PyListObject *)obj)->ob_item : ((PyTupleObject *)obj)->ob_item;
    for (Py_ssize_t i = 0; i < n && i < PREFETCH_AHEAD; i++) PREFETCH(items[i]);
    prefetch_inner(items[0]);
    /* a list is re-measured each step: an enc_hook may change it, as under msgspec */
    for (Py_ssize_t i = 0; i < (is_list ? PyList_GET_SIZE(obj) : n); i++) {
        items = is_list ? ((PyListObject *)obj)->ob_item : ((PyTupleObject *)obj)->ob_item;
        Py_ssize_t size = is_list ? PyList_GET_SIZE(obj) : n;
        if (i + PREFETCH_AHEAD < size) PREFETCH(items[i + PREFETCH_AHEAD]);
        if (i + 1 < size) prefetch_inner(items[i + 1]);
        PyObject *item = items[i];
        Py_INCREF(item);
        int r = put_value(ctx, item);
        Py_DECREF(item);
        if (r < 0 || put_char(ctx->b, ',') < 0) goto done;
    }
    if (ctx->b->p[ctx->b->len - 1] == ',') ctx->b->p[ctx->b->len - 1] = ']';
    else if (put_char(ctx->b, ']') < 0) goto done;  /* emptied by a hook: "[" then "]" */
    status = 0;
done:
    Py_LeaveRecursiveCall();
    return status;
}

static int put_struct(Ctx *ctx, PyObject *obj, const Plan *plan, Py_ssize_t *splice_at) {
    JBuf *b = ctx->b;
    if (put_char(b, '{') < 0) return -1;
    size_t start = b->len;
    if (Py_EnterRecursiveCall(" while serializing an object")) return -1;
    int status = -1;
    for (Py_ssize_t i = 0; i < plan->nfields; i++) {
        PyObject *val = *(PyObject **)((char *)obj + plan->offsets[i]);
        if (val != NULL) PREFETCH_OBJECT(val);
    }
    for (Py_ssize_t i = 0; i < plan->nfields; i++) {
        PyObject *val = *(PyObject **)((char *)obj + plan->offsets[i]);
        if (val != NULL) prefetch_inner(val);
    }
    for (Py_ssize_t i = 0; i < plan->nfields; i++) {
        PyObject *val = *(PyObject **)((char *)obj + plan->offsets[i]);
        if (val == NULL) {
            PyErr_Format(PyExc_AttributeError, "Struct field %.100s is unset",
                         plan->keys[i]);
            goto done;
        }
        if (val == unset || val == plan->defaults[i]) continue;
        if (i == plan->splice_index && splice_at != NULL) *splice_at = (Py_ssize_t)b->len;
        if (put_bytes(b, plan->keys[i], plan->key_lens[i]) < 0) goto done;
        Py_INCREF(val);
        int r = put_value(ctx, val);
        Py_DECREF(val);
        if (r < 0 || put_char(b, ',') < 0) goto done;
    }
    if (b->len == start) {
        if (put_char(b, '}') < 0) goto done;
    } else {
        b->p[b->len - 1] = '}';
    }
    status = 0;
done:
    Py_LeaveRecursiveCall();
    return status;
}

static const Plan *plan_of(PyTypeObject *type) {
    for (int i = 0; i < PLAN_CACHE && cached_types[i] != NULL; i++)
        if (cached_types[i] == type) return cached_plans[i];
    if (plans == NULL) return NULL;
    PyObject *capsule = PyDict_GetItemWithError(plans, (PyObject *)type);
    if (capsule == NULL) return NULL;
    return (const Plan *)PyCapsule_GetPointer(capsule, "engine.native._native.Plan");
}

/* A value msgspec writes: counted first when its form changes (NaN/inf, bytes-like); a
 * NaN/inf Decimal is written null here (msgspec would write NaN, which is not JSON); a dict
 * subclass and a plain enum member (not an int or str one) as unique_keys makes them. */
static int put_other(Ctx *ctx, PyObject *obj, PyTypeObject *type) {
    if (PyFloat_Check(obj)) {  /* a float subclass (numpy.float64): msgspec's null too */
        if (!isfinite(PyFloat_AS_DOUBLE(obj))) note(ctx, NOTED_NONFINITE);
    } else if ((PyObject *)type == decimal_type) {
        PyObject *finite = PyObject_CallMethod(obj, "is_finite", NULL);
        if (finite == NULL) return -1;
        int yes = PyObject_IsTrue(finite);
        Py_DECREF(finite);
        if (yes < 0) return -1;
        if (!yes) {
            note(ctx, NOTED_NONFINITE);
            return put_bytes(ctx->b, "null", 4);
        }
    } else if (type == &PyBytes_Type || type == &PyByteArray_Type ||
               type == &PyMemoryView_Type) {
        note(ctx, NOTED_BYTES);
    } else if (PyDict_Check(obj) ||
               (PyObject_TypeCheck((PyObject *)type, (PyTypeObject *)enum_meta) &&
                !PyLong_Check(obj) && !PyUnicode_Check(obj))) {
        return put_unique(ctx, obj);
    }
    return put_fallback(ctx, obj);
}

/* A msgspec.Raw: its bytes, as msgspec writes them (a decoded one is checked JSON; one
 * built by hand is written as given, even empty, by msgspec too). Its levels are not
 * counted: it is its writer's JSON (engine relay's, engine ingest's: each checks the
 * server's limit on it), as a Raw that is not JSON is. */
static int put_raw(JBuf *b, PyObject *obj) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return -1;
    int r = put_bytes(b, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return r;
}

/* A dict, list, tuple or planned Struct (kind 0, 1, 2, 3) one level deeper, refused past
 * ctx->max_depth: a compare per container, where a scan of the bytes afterwards would cost
 * a pass over them */
static int put_container(Ctx *ctx, PyObject *obj, int kind, const Plan *plan) {
    if (++ctx->depth > ctx->max_depth && ctx->max_depth) {
        ctx->depth--;
        return json_too_deep();
    }
    int r = kind == 0 ? put_dict(ctx, obj)
          : kind == 3 ? put_struct(ctx, obj, plan, NULL)
                      : put_sequence(ctx, obj, kind == 1);
    ctx->depth--;
    return r;
}

static int put_value(Ctx *ctx, PyObject *obj) {
    PyTypeObject *type = Py_TYPE(obj);
    if (type == &PyUnicode_Type) return put_str(ctx->b, obj);
    if (type == &PyDict_Type) return put_container(ctx, obj, 0, NULL);
    if (type == &PyList_Type) return put_container(ctx, obj, 1, NULL);
    if (obj == Py_None) return put_bytes(ctx->b, "null", 4);
    if (obj == Py_True) return put_bytes(ctx->b, "true", 4);
    if (obj == Py_False) return put_bytes(ctx->b, "false", 5);
    if (type == &PyLong_Type) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow) return put_fallback(ctx, obj);
        if (v == -1 && PyErr_Occurred()) return -1;
        return put_i64(ctx->b, v);
    }
    if (type == &PyFloat_Type) return put_float(ctx, obj);
    if (type == &PyTuple_Type) return put_container(ctx, obj, 2, NULL);
    if (type == PyDateTimeAPI->DateTimeType) {
        PyObject *tz = PyDateTime_DATE_GET_TZINFO(obj);
        if (tz == Py_None) return put_datetime(ctx->b, obj, 0);
        if (tz == PyDateTime_TimeZone_UTC) return put_datetime(ctx->b, obj, 1);
        return put_fallback(ctx, obj);
    }
    if ((PyObject *)type == raw_type) return put_raw(ctx->b, obj);
    const Plan *plan = plan_of(type);
    if (plan != NULL) return put_container(ctx, obj, 3, plan);
    if (PyErr_Occurred()) return -1;
    return put_other(ctx, obj, type);
}

int json_encode_item(JBuf *b, PyObject *item, PyObject *fallback, Py_ssize_t *splice_at,
                     size_t *callouts, size_t *noted) {
    const Plan *plan = plan_of(Py_TYPE(item));
    if (plan == NULL) return PyErr_Occurred() ? -1 : 0;
    Ctx ctx = {b, fallback, 0, 0, 0, MAX_VALUE_DEPTH};
    b->len = 0;
    *splice_at = -1;
    Py_ssize_t saved[NOTED_KINDS];
    memcpy(saved, noted_counts, sizeof saved);
    int r = put_struct(&ctx, item, plan, splice_at);
    if (r < 0) memcpy(noted_counts, saved, sizeof saved);  /* not written: not counted */
    *callouts = ctx.callouts;
    *noted = ctx.noted;
    return r < 0 ? -1 : 1;
}

int json_is_utc_datetime(PyObject *obj) {
    return Py_IS_TYPE(obj, PyDateTimeAPI->DateTimeType) &&
           PyDateTime_DATE_GET_TZINFO(obj) == PyDateTime_TimeZone_UTC;
}

/* take_counts() -> (nonfinite, bytes, duplicate_key): what the encoder wrote in another
 * form in this thread since the last call (then zero) */
PyObject *native_take_counts(PyObject *self, PyObject *unused) {
    PyObject *counts = Py_BuildValue("(nnn)", noted_counts[NOTED_NONFINITE],
                                     noted_counts[NOTED_BYTES],
                                     noted_counts[NOTED_DUPLICATE_KEY]);
    if (counts != NULL) memset(noted_counts, 0, sizeof noted_counts);
    return counts;
}

int json_item_ids(PyObject *item, PyObject **project, PyObject **id, PyObject **trace_id,
                  PyObject **started_at, PyObject **ended_at) {
    const Plan *plan = plan_of(Py_TYPE(item));
    if (plan == NULL) return PyErr_Occurred() ? -1 : 0;
    if (plan->project_index < 0 || plan->id_index < 0 || plan->trace_index < 0) return 0;
    *project = *(PyObject **)((char *)item + plan->offsets[plan->project_index]);
    *id = *(PyObject **)((char *)item + plan->offsets[plan->id_index]);
    *trace_id = *(PyObject **)((char *)item + plan->offsets[plan->trace_index]);
    if (started_at != NULL)
        *started_at = plan->started_index < 0
                          ? NULL
                          : *(PyObject **)((char *)item + plan->offsets[plan->started_index]);
    if (ended_at != NULL)
        *ended_at = plan->ended_index < 0
                        ? NULL
                        : *(PyObject **)((char *)item + plan->offsets[plan->ended_index]);
    return 1;
}

/* ---- module functions ----------------------------------------------------------------- */

static void plan_free(PyObject *capsule) {
    Plan *plan = PyCapsule_GetPointer(capsule, "engine.native._native.Plan");
    if (plan == NULL) return;
    for (Py_ssize_t i = 0; i < plan->nfields; i++) {
        PyMem_Free(plan->keys[i]);
        Py_XDECREF(plan->defaults[i]);
    }
    PyMem_Free(plan->keys);
    PyMem_Free(plan->key_lens);
    PyMem_Free(plan->offsets);
    PyMem_Free(plan->defaults);
    PyMem_Free(plan);
}

/* struct_plan(type, names, descriptors, defaults, splice_name, unset, nodefault)
 * names: the encoded field names; descriptors: each field's slot (member descriptor);
 * defaults: per field, the object a value is left out for (compared by identity), or
 * nodefault for "always written" -- the caller has checked the type's config (no tag, not
 * array_like, no default factories). splice_name: the field whose key offset put() reports. */
PyObject *native_struct_plan(PyObject *self, PyObject *args) {
    PyObject *type, *names, *descrs, *defaults, *splice_name, *unset_obj, *nodefault;
    if (!PyArg_ParseTuple(args, "O!O!O!O!UOO:struct_plan", &PyType_Type, &type, &PyTuple_Type,
                          &names, &PyTuple_Type, &descrs, &PyTuple_Type, &defaults,
                          &splice_name, &unset_obj, &nodefault))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (PyTuple_GET_SIZE(descrs) != n || PyTuple_GET_SIZE(defaults) != n) {
        PyErr_SetString(PyExc_ValueError, "struct_plan: names, descriptors and defaults differ in length");
        return NULL;
    }
    Plan *plan = PyMem_Calloc(1, sizeof(Plan));
    if (plan == NULL) return PyErr_NoMemory();
    plan->nfields = n;
    plan->splice_index = plan->project_index = plan->id_index = plan->trace_index = -1;
    plan->started_index = plan->ended_index = -1;
    plan->keys = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    plan->key_lens = PyMem_Calloc((size_t)n + 1, sizeof(size_t));
    plan->offsets = PyMem_Calloc((size_t)n + 1, sizeof(Py_ssize_t));
    plan->defaults = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *));
    PyObject *capsule = PyCapsule_New(plan, "engine.native._native.Plan", plan_free);
    if (capsule == NULL || !plan->keys || !plan->key_lens || !plan->offsets || !plan->defaults) {
        if (capsule == NULL) {
            PyMem_Free(plan->keys);
            PyMem_Free(plan->key_lens);
            PyMem_Free(plan->offsets);
            PyMem_Free(plan->defaults);
            PyMem_Free(plan);
        } else {
            Py_DECREF(capsule);
        }
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i), *descr = PyTuple_GET_ITEM(descrs, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "struct_plan: field names must be str");
            goto fail;
        }
        if (!Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descr)->d_member->type != Py_T_OBJECT_EX ||
            !PyType_IsSubtype((PyTypeObject *)type,
                              ((PyMemberDescrObject *)descr)->d_common.d_type)) {
            PyErr_Format(PyExc_TypeError, "struct_plan: field %R has no object slot", name);
            goto fail;
        }
        plan->offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        JBuf key = {0};
        if (put_str(&key, name) < 0 || put_char(&key, ':') < 0) {
            jbuf_free(&key);
            goto fail;
        }
        plan->keys[i] = key.p;
        plan->key_lens[i] = key.len;
        PyObject *d = PyTuple_GET_ITEM(defaults, i);
        if (d != nodefault) {
            Py_INCREF(d);
            plan->defaults[i] = d;
        }
        if (PyUnicode_Compare(name, splice_name) == 0) plan->splice_index = i;
        if (PyUnicode_CompareWithASCIIString(name, "project_id") == 0) plan->project_index = i;
        if (PyUnicode_CompareWithASCIIString(name, "id") == 0) plan->id_index = i;
        if (PyUnicode_CompareWithASCIIString(name, "trace_id") == 0) plan->trace_index = i;
        if (PyUnicode_CompareWithASCIIString(name, "started_at") == 0) plan->started_index = i;
        if (PyUnicode_CompareWithASCIIString(name, "ended_at") == 0) plan->ended_index = i;
    }
    if (plans == NULL && (plans = PyDict_New()) == NULL) goto fail;
    if (PyDict_SetItem(plans, type, capsule) < 0) goto fail;
    Py_DECREF(capsule);  /* the dict holds it (and the type) from here on */
    int slot = 0;  /* a type planned again takes its old place: its old Plan is freed */
    while (slot < PLAN_CACHE - 1 && cached_types[slot] != NULL &&
           cached_types[slot] != (PyTypeObject *)type)
        slot++;
    cached_types[slot] = (PyTypeObject *)type;
    cached_plans[slot] = plan;
    Py_INCREF(unset_obj);
    Py_XSETREF(unset, unset_obj);
    Py_RETURN_NONE;
fail:
    Py_DECREF(capsule);
    return NULL;
}

/* encode(fallback, obj) -> bytes: obj as put() encodes it (the tests compare it to msgspec):
 * an item (a planned Struct) within MAX_VALUE_DEPTH, any other value at any depth */
PyObject *native_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode takes 2 arguments (fallback, obj)");
        return NULL;
    }
    JBuf b = {0};
    Ctx ctx = {&b, args[0], 0, 0, 0, 0};
    PyObject *out = NULL;
    Py_ssize_t saved[NOTED_KINDS];
    memcpy(saved, noted_counts, sizeof saved);
    const Plan *plan = plan_of(Py_TYPE(args[1]));
    if (plan == NULL && PyErr_Occurred()) return NULL;
    if (plan != NULL) ctx.max_depth = MAX_VALUE_DEPTH;
    if ((plan != NULL ? put_struct(&ctx, args[1], plan, NULL) : put_value(&ctx, args[1])) == 0)
        out = PyBytes_FromStringAndSize(b.p, (Py_ssize_t)b.len);
    else
        memcpy(noted_counts, saved, sizeof saved);
    jbuf_free(&b);
    return out;
}

/* The UTC datetime of secs (since the epoch) + us, the civil date by integer arithmetic
 * (H. Hinnant's civil_from_days): no time zone conversion. */
static PyObject *utc_datetime(int64_t secs, int us) {
    int64_t days = secs / 86400, rem = secs % 86400;
    if (rem < 0) {
        rem += 86400;
        days -= 1;
    }
    int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    int day = (int)(doy - (153 * mp + 2) / 5 + 1), month = (int)(mp < 10 ? mp + 3 : mp - 9);
    int64_t year = yoe + era * 400 + (month <= 2);
    if (year < 1 || year > 9999) {
        PyErr_SetString(PyExc_OverflowError, "timestamp out of datetime's range");
        return NULL;
    }
    return PyDateTimeAPI->DateTime_FromDateAndTime(
        (int)year, month, day, (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60), us,
        PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

/* utcnow() -> datetime.now(timezone.utc), to the microsecond (rounded down), in a
 * quarter of the time */
PyObject *native_utcnow(PyObject *self, PyObject *unused) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return utc_datetime((int64_t)ts.tv_sec, (int)(ts.tv_nsec / 1000));
}

/* utc_datetime(secs, us): what utcnow() makes of that instant (the tests check the dates) */
PyObject *native_utc_datetime(PyObject *self, PyObject *args) {
    long long secs;
    int us;
    if (!PyArg_ParseTuple(args, "Li:utc_datetime", &secs, &us)) return NULL;
    if (us < 0 || us > 999999) {
        PyErr_SetString(PyExc_ValueError, "us must be in 0..999999");
        return NULL;
    }
    return utc_datetime((int64_t)secs, us);
}

int json_init(void) {
    init_escape_table();
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return -1;
    PyObject *decimal = PyImport_ImportModule("decimal");
    if (decimal == NULL) return -1;
    decimal_type = PyObject_GetAttrString(decimal, "Decimal");
    Py_DECREF(decimal);
    if (decimal_type == NULL) return -1;
    PyObject *msgspec = PyImport_ImportModule("msgspec");
    if (msgspec == NULL) return -1;
    raw_type = PyObject_GetAttrString(msgspec, "Raw");
    Py_DECREF(msgspec);
    if (raw_type == NULL) return -1;
    PyObject *enum_module = PyImport_ImportModule("enum");
    if (enum_module == NULL) return -1;
    enum_meta = PyObject_GetAttrString(enum_module, "EnumMeta");
    Py_DECREF(enum_module);
    return enum_meta == NULL ? -1 : 0;
}
