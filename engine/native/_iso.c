/* engine.native._native: ISO-8601 / RFC 3339 timestamps in UTC, read as msgspec reads them.
 *
 * A dict handed to Tracer.call_start / call_end may carry its started_at / ended_at as text
 * ("2026-12-04T10:11:12.123456Z", "...+00:00"), as JSON-shaped data does. msgspec.convert
 * would parse it on the general path; here the one-call path makes the same datetime
 * itself, for text in UTC: date, 'T' / 't' / ' ', hh:mm:ss, an optional fraction (one or
 * more digits: six kept, the seventh rounds half up, carried into the seconds), then 'Z' /
 * 'z' or an offset of zero (+00:00, -00:00, +0000). Anything else -- naive text, another
 * offset, an invalid date, a value out of range -- is left to the general path, which
 * parses or refuses it as msgspec does (tests/wire/test_native_iso.py compares the two on
 * generated text).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>

#include "_iso.h"

static int digits(const char *p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

static int leap(int year) { return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0; }

static int days_in_month(int year, int month) {
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return month == 2 && leap(year) ? 29 : days[month - 1];
}

typedef struct {
    int year, month, day, hour, minute, second, us;
} Civil;

/* The UTC offset at p (after the time): 1 when it is zero ('Z', +00:00, -00:00, +0000)
 * and ends the text, else 0. */
static int zero_offset(const char *p, const char *end) {
    Py_ssize_t left = end - p;
    if (left == 1) return p[0] == 'Z' || p[0] == 'z';
    if (p[0] != '+' && p[0] != '-') return 0;
    int hours, minutes;
    if (left == 6 && p[3] == ':')
        return digits(p + 1, 2, &hours) && digits(p + 4, 2, &minutes) && !hours && !minutes;
    if (left == 5) return digits(p + 1, 2, &hours) && digits(p + 3, 2, &minutes) && !hours && !minutes;
    return 0;
}

/* One more second, carried up to the year; 0 if that passes year 9999. */
static int add_second(Civil *c) {
    if (++c->second < 60) return 1;
    c->second = 0;
    if (++c->minute < 60) return 1;
    c->minute = 0;
    if (++c->hour < 24) return 1;
    c->hour = 0;
    if (++c->day <= days_in_month(c->year, c->month)) return 1;
    c->day = 1;
    if (++c->month <= 12) return 1;
    c->month = 1;
    return ++c->year <= 9999;
}

/* "YYYY-MM-DD?hh:mm:ss[.f+]" at s: 1 with the fields set (p: just past it), else 0. */
static int civil_of(const char *s, const char *end, Civil *c, const char **p) {
    if (end - s < 19 || s[4] != '-' || s[7] != '-' || s[13] != ':' || s[16] != ':') return 0;
    if (s[10] != 'T' && s[10] != 't' && s[10] != ' ') return 0;
    if (!digits(s, 4, &c->year) || !digits(s + 5, 2, &c->month) || !digits(s + 8, 2, &c->day) ||
        !digits(s + 11, 2, &c->hour) || !digits(s + 14, 2, &c->minute) ||
        !digits(s + 17, 2, &c->second))
        return 0;
    if (c->year < 1 || c->month < 1 || c->month > 12 || c->day < 1 ||
        c->day > days_in_month(c->year, c->month) || c->hour > 23 || c->minute > 59 ||
        c->second > 59)
        return 0;
    const char *q = s + 19;
    c->us = 0;
    int round_up = 0;
    if (q < end && *q == '.') {
        q++;
        const char *first = q;
        while (q < end && *q >= '0' && *q <= '9') {
            Py_ssize_t k = q - first;
            if (k < 6) c->us = c->us * 10 + (*q - '0');
            else if (k == 6) round_up = *q >= '5';
            q++;
        }
        Py_ssize_t n = q - first;
        if (n == 0) return 0;
        for (Py_ssize_t k = n; k < 6; k++) c->us *= 10;
    }
    if (round_up && ++c->us == 1000000) {
        c->us = 0;
        if (!add_second(c)) return 0;
    }
    *p = q;
    return 1;
}

int iso_utc_datetime(PyObject *text, PyObject **out) {
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(text, &len);
    if (s == NULL) {
        PyErr_Clear();  /* lone surrogates: not a timestamp; the general path says so */
        return 0;
    }
    const char *end = s + len, *p;
    Civil c;
    if (!civil_of(s, end, &c, &p) || p >= end || !zero_offset(p, end)) return 0;
    *out = PyDateTimeAPI->DateTime_FromDateAndTime(c.year, c.month, c.day, c.hour, c.minute,
                                                   c.second, c.us, PyDateTime_TimeZone_UTC,
                                                   PyDateTimeAPI->DateTimeType);
    return *out == NULL ? -1 : 1;
}

/* iso_utc_datetime(text) -> the aware UTC datetime msgspec makes of it, or None when the
 * text is not a UTC timestamp this path reads (see the top of this file) */
PyObject *native_iso_utc_datetime(PyObject *self, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "iso_utc_datetime takes a str");
        return NULL;
    }
    PyObject *made = NULL;
    int found = iso_utc_datetime(text, &made);
    if (found < 0) return NULL;
    if (!found) Py_RETURN_NONE;
    return made;
}

int iso_init(void) {
    PyDateTime_IMPORT;
    return PyDateTimeAPI == NULL ? -1 : 0;
}
