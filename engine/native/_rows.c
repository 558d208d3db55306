/* engine.native._native: engine serve's stored call rows as the dicts its reads answer.
 *
 * call_dicts(rows, keys, kinds, raw_type, from_us) is engine/server/_rows.py's row_to_call
 * over a page of rows: per row a dict of keys[i] -> the row's value i, where kinds[i] says
 * what the value becomes: 0 itself, 1 (microseconds since the epoch) the aware UTC datetime
 * (clamped to datetime's range, as from_us does), 2 (JSON text as bytes or str) a
 * raw_type (msgspec.Raw) over its UTF-8 bytes. A time value that is not an int is left to
 * from_us. A stream of calls runs this per row: in Python it cost more than SQLite's read.
 *
 * take_rows(rows, want, max_bytes, sized) is engine/server/_rows.py's take_rows: up to want
 * rows of an iterator (a cursor, a block), fewer once the values at the indexes in sized
 * pass max_bytes (bytes: their size, str: their length), and whether the iterator ran out.
 * It runs per row of every stream: ~0.35 us a row in Python, next to nothing here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>

#include "_rows.h"

#define US_PER_DAY 86400000000LL
/* datetime.min and datetime.max in UTC, in microseconds since the epoch */
#define MIN_US (-62135596800000000LL)
#define MAX_US (253402300799999999LL)

enum { KIND_PLAIN = 0, KIND_TIME = 1, KIND_JSON = 2 };

/* days since 1970-01-01 -> proleptic Gregorian civil date (H. Hinnant's algorithm) */
static void civil_from_days(long long days, int *year, int *month, int *day) {
    days += 719468;
    long long era = (days >= 0 ? days : days - 146096) / 146097;
    long long doe = days - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    *day = (int)(doy - (153 * mp + 2) / 5 + 1);
    *month = (int)(mp < 10 ? mp + 3 : mp - 9);
    *year = (int)(yoe + era * 400 + (*month <= 2));
}

static PyObject *utc_of(PyObject *value, PyObject *from_us) {
    if (!PyLong_CheckExact(value)) return PyObject_CallOneArg(from_us, value);
    int overflow;
    long long us = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (us == -1 && PyErr_Occurred()) return NULL;
    if (overflow || us < MIN_US || us > MAX_US) us = (overflow > 0 || us > MAX_US) ? MAX_US : MIN_US;
    long long days = (us >= 0 ? us : us - (US_PER_DAY - 1)) / US_PER_DAY;
    long long in_day = us - days * US_PER_DAY;
    int year, month, day;
    civil_from_days(days, &year, &month, &day);
    long long seconds = in_day / 1000000;
    return PyDateTimeAPI->DateTime_FromDateAndTime(
        year, month, day, (int)(seconds / 3600), (int)(seconds / 60 % 60), (int)(seconds % 60),
        (int)(in_day % 1000000), PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

static PyObject *raw_of(PyObject *value, PyObject *raw_type) {
    if (PyBytes_CheckExact(value)) return PyObject_CallOneArg(raw_type, value);
    PyObject *utf8 = PyUnicode_AsUTF8String(value);
    if (utf8 == NULL) return NULL;
    PyObject *raw = PyObject_CallOneArg(raw_type, utf8);
    Py_DECREF(utf8);
    return raw;
}

static PyObject *call_dict(PyObject *row, PyObject *keys, const char *kinds, Py_ssize_t width,
                           PyObject *raw_type, PyObject *from_us) {
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != width) {
        PyErr_Format(PyExc_ValueError, "call_dicts: a row must be a tuple of %zd values", width);
        return NULL;
    }
    PyObject *call = PyDict_New();
    if (call == NULL) return NULL;
    for (Py_ssize_t i = 0; i < width; i++) {
        PyObject *value = PyTuple_GET_ITEM(row, i);
        int set;
        if (value == Py_None || kinds[i] == KIND_PLAIN) {
            set = PyDict_SetItem(call, PyTuple_GET_ITEM(keys, i), value);
        } else {
            PyObject *made = kinds[i] == KIND_TIME ? utc_of(value, from_us) : raw_of(value, raw_type);
            if (made == NULL) {
                Py_DECREF(call);
                return NULL;
            }
            set = PyDict_SetItem(call, PyTuple_GET_ITEM(keys, i), made);
            Py_DECREF(made);
        }
        if (set < 0) {
            Py_DECREF(call);
            return NULL;
        }
    }
    return call;
}

PyObject *native_call_dicts(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyList_Check(args[0]) || !PyTuple_Check(args[1]) ||
        !PyBytes_Check(args[2]) || PyBytes_GET_SIZE(args[2]) != PyTuple_GET_SIZE(args[1])) {
        PyErr_SetString(PyExc_TypeError, "call_dicts(rows: list, keys: tuple, kinds: bytes of "
                                         "len(keys), raw_type, from_us)");
        return NULL;
    }
    PyObject *rows = args[0], *keys = args[1];
    const char *kinds = PyBytes_AS_STRING(args[2]);
    Py_ssize_t n = PyList_GET_SIZE(rows), width = PyTuple_GET_SIZE(keys);
    PyObject *calls = PyList_New(n);
    if (calls == NULL) return NULL;
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *call = call_dict(PyList_GET_ITEM(rows, r), keys, kinds, width, args[3], args[4]);
        if (call == NULL) {
            Py_DECREF(calls);
            return NULL;
        }
        PyList_SET_ITEM(calls, r, call);
    }
    return calls;
}

/* the size of one value that take_rows counts (None: 0), -1 with an error set */
static Py_ssize_t value_size(PyObject *value) {
    if (value == Py_None) return 0;
    if (PyBytes_Check(value)) return PyBytes_GET_SIZE(value);
    if (PyUnicode_Check(value)) return PyUnicode_GET_LENGTH(value);
    return PyObject_Length(value);
}

/* the summed sizes of a row's values at the indexes at[], -1 with an error set */
static Py_ssize_t row_size(PyObject *row, const Py_ssize_t *at, Py_ssize_t n_at) {
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < n_at; i++) {
        Py_ssize_t one;
        if (PyTuple_CheckExact(row)) {  /* what a cursor yields: no new reference */
            if (at[i] < 0 || at[i] >= PyTuple_GET_SIZE(row)) {
                PyErr_SetString(PyExc_IndexError, "take_rows: an index of sized is past a row");
                return -1;
            }
            one = value_size(PyTuple_GET_ITEM(row, at[i]));
        } else {
            PyObject *value = PySequence_GetItem(row, at[i]);
            if (value == NULL) return -1;
            one = value_size(value);
            Py_DECREF(value);
        }
        if (one < 0) return -1;
        size += one;
    }
    return size;
}

#define MAX_SIZED 32

PyObject *native_take_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyIter_Check(args[0]) || !PyTuple_Check(args[3]) ||
        PyTuple_GET_SIZE(args[3]) > MAX_SIZED) {
        PyErr_SetString(PyExc_TypeError, "take_rows(rows: iterator, want: int, max_bytes: int, "
                                         "sized: tuple of at most 32 ints)");
        return NULL;
    }
    Py_ssize_t want = PyLong_AsSsize_t(args[1]), max_bytes = PyLong_AsSsize_t(args[2]);
    if ((want == -1 || max_bytes == -1) && PyErr_Occurred()) return NULL;
    Py_ssize_t at[MAX_SIZED], n_at = PyTuple_GET_SIZE(args[3]);
    for (Py_ssize_t i = 0; i < n_at; i++) {
        at[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(args[3], i));
        if (at[i] == -1 && PyErr_Occurred()) return NULL;
    }
    PyObject *taken = PyList_New(0), *row;
    if (taken == NULL) return NULL;
    Py_ssize_t used = 0;
    while ((row = PyIter_Next(args[0])) != NULL) {
        Py_ssize_t size = row_size(row, at, n_at);
        if (size < 0 || PyList_Append(taken, row) < 0) {
            Py_DECREF(row);
            Py_DECREF(taken);
            return NULL;
        }
        Py_DECREF(row);
        used += size;
        if (used >= max_bytes || PyList_GET_SIZE(taken) >= want) {
            return Py_BuildValue("(NO)", taken, Py_False);
        }
    }
    if (PyErr_Occurred()) {
        Py_DECREF(taken);
        return NULL;
    }
    return Py_BuildValue("(NO)", taken, Py_True);
}

int rows_init(void) {
    PyDateTime_IMPORT;
    return PyDateTimeAPI == NULL ? -1 : 0;
}
