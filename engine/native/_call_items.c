/* engine.native._native: the items of Tracer.call_start / call_end. call_types() names the
 * wire's start, end and answer types; call_dict_fields() the fields of the first two, so
 * that a dict whose values already have their fields' types becomes the Struct
 * msgspec.convert would make, without convert's copies (RingWriter.call_start / call_end).
 * A timestamp given as ISO-8601 text in UTC is made the datetime convert would make of it
 * (_iso.c); any other text goes to convert. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "_call_items.h"
#include "_iso.h"

/* call_types(): the wire types of Tracer.call_start / call_end and the start's answer */
PyTypeObject *start_type, *end_type;
PyObject *start_res_type, *start_res_kwnames;

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

/* The Struct of type from vals, the fields in present (bit per field index). */
static PyObject *make_struct(DictFields *f, PyTypeObject *type, PyObject **vals,
                             uint32_t present) {
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

/* The index of key among the fields; f->n for an unknown key (convert ignores it), -1 for
 * a key that is not an exact str, -2 with an exception set. */
static Py_ssize_t field_index(DictFields *f, PyObject *key) {
    Py_ssize_t i = 0;
    while (i < f->n && f->names[i] != key) i++;  /* literal keys are the interned names */
    if (i < f->n) return i;
    if (!PyUnicode_CheckExact(key)) return -1;
    for (i = 0; i < f->n; i++) {
        int eq = PyUnicode_Compare(f->names[i], key);
        if (eq == -1 && PyErr_Occurred()) return -2;
        if (eq == 0) break;
    }
    return i;
}

/* The Struct msgspec.convert(d, type, strict=False) makes of a dict whose every key is a
 * field and every value already of its field's type (convert's copy of a dict value
 * aside: the dict itself is used, encoded at once and never handed out), a timestamp as
 * ISO-8601 text in UTC made the datetime convert makes of it. Py_None when the dict is not
 * such a one (convert, on the general path, decides and names what is wrong); NULL with
 * an exception set. */
PyObject *struct_of_dict(PyObject *d, int is_end) {
    DictFields *f = &dict_fields[is_end];
    PyTypeObject *type = is_end ? end_type : start_type;
    if (f->n == 0 || type == NULL || PyDict_GET_SIZE(d) > f->n) Py_RETURN_NONE;
    PyObject *vals[MAX_DICT_FIELDS];
    PyObject *parsed[MAX_DICT_FIELDS];  /* datetimes made of text here (owned) */
    int n_parsed = 0;
    uint32_t present = 0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    PyObject *made = Py_None;  /* borrowed until a Struct is made */
    while (PyDict_Next(d, &pos, &k, &v)) {
        Py_ssize_t i = field_index(f, k);
        if (i < 0 || i == f->n) {
            made = i == -2 ? NULL : Py_None;
            goto done;
        }
        int kind = f->kinds[i];
        if ((kind == F_DATETIME || kind == F_OPT_DATETIME) && PyUnicode_CheckExact(v)) {
            int found = iso_utc_datetime(v, &parsed[n_parsed]);
            if (found <= 0) {  /* text this path does not read: convert's */
                made = found < 0 ? NULL : Py_None;
                goto done;
            }
            v = parsed[n_parsed++];
        } else if (!dict_value_fits(kind, v) || ((f->ids >> i) & 1 && v == Py_None)) {
            goto done;
        }
        vals[i] = v;
        present |= 1u << i;
    }
    if ((present & f->required) == f->required && (present & f->ids) == f->ids)
        made = make_struct(f, type, vals, present);
done:
    for (int p = 0; p < n_parsed; p++) Py_DECREF(parsed[p]);
    return made == Py_None ? Py_NewRef(Py_None) : made;
}

/* call_dict_fields(start_fields, end_fields): each a tuple of (name, kind, required, id)
 * per field of the type, in its order; () turns dicts of that type off. */
PyObject *native_call_dict_fields(PyObject *self, PyObject *args) {
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

/* call_types(start_type, end_type, start_res_type): what RingWriter.call_start / call_end
 * take and answer (the wire's StartedCallSchemaForInsert, EndedCallSchemaForInsert and
 * CallStartRes, whose id and trace_id are keyword arguments) */
PyObject *native_call_types(PyObject *self, PyObject *args) {
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
