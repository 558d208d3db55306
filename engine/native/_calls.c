/* engine.native._native: TracerCalls and CallHandleBase, the C halves of engine.Tracer and
 * engine.CallHandle where the accelerator is built and the GIL is on (engine/producer/
 * _calls.py and _handle.py hold the pure-Python versions). A traced call is then: the
 * handle's ids, start time and start item, TracerCalls' dispatch to the writer's one-call
 * path (_writer.c), the same for the end -- no Python frame in between. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <pthread.h>

#include "_call_items.h"
#include "_calls.h"
#include "_ids.h"
#include "_json.h"
#include "_writer.h"

/* The base class of engine.Tracer (where the GIL is not disabled): call_start / call_end
 * call the writer's one-call path (_fast_start / _fast_end, RingWriter.call_start /
 * call_end bound, or None) straight from C, and hand everything that path did not finish
 * to the Python methods _call_start_rest / _call_end_rest(item, done), as the pure-Python
 * base in engine/producer/_calls.py does. Saves a Python frame per call (~0.1 µs). */
typedef struct {
    PyObject_HEAD
    PyObject *fast_start, *fast_end;  /* NULL: none */
} TracerCalls;

static PyObject *str_fast_failed, *str_start_rest, *str_end_rest, *str_what_start,
    *str_what_end;

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
            if (PyErr_ExceptionMatches(PyExc_Exception)) {
                /* _fast_failed(fast, current, error, item, is_end) raises Closed when a
                 * close() released the writer meanwhile, the EncodeError naming the field
                 * for a value that could not be encoded; else the error stands */
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                PyErr_NormalizeException(&type, &value, &tb);
                if (tb != NULL) PyException_SetTraceback(value, tb);
                PyObject *current = is_end ? self->fast_end : self->fast_start;
                PyObject *call_args[6] = {(PyObject *)self, fast, current ? current : Py_None,
                                          value ? value : Py_None, item,
                                          is_end ? Py_True : Py_False};
                PyObject *ok = PyObject_VectorcallMethod(
                    str_fast_failed, call_args, 6 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
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

PyTypeObject TracerCallsType = {
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
 * __enter__ / __exit__ doing what the pure-Python handle in engine/producer/_handle.py does --
 * ids (a child takes its parent's trace), start time, the start record through the
 * tracer's call_start, the context variable; on exit the end record through call_end. */
typedef struct {
    PyObject_HEAD
    PyObject *id, *trace_id, *parent_id, *op_name, *started_at, *output, *summary, *inputs,
        *attributes, *display_name, *token, *project, *tracer;
} CallHandle;

static PyObject *current_var, *describe_func, *write_safely_func, *start_call_kwnames,
    *end_call_kwnames;
/* the calls of this process started and not ended yet (handle -> None): engine/producer/
 * _handle.py's _open, which the engine's close ends with its reason (end_open_calls) */
static PyObject *open_calls;
/* starts being written until their call is in open_calls, and ends from taking their call
 * out of it until written: the engine's close waits for those of other threads before it
 * ends the calls left open and stops taking ends (writes_cut, writes_before) */
static long writes_in_flight[2];  /* under the GIL; by the epoch they began in */
static int writes_epoch;  /* writes_cut() flips it: new writes count apart from older ones */
static __thread long my_writes_in_flight[2];  /* this thread's (a signal handler's close runs
                                               * on top of one it interrupted: not waited
                                               * for) */

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

/* A wrong-typed argument is the caller's mistake, raised where it is made (written, the
 * call would be refused by the server, 422, and dead-lettered for good). The messages are
 * _PyCallHandle's (engine/producer/_handle.py). */
static int ch_wrong_type(const char *name, const char *wanted, PyObject *given) {
    PyErr_Format(PyExc_TypeError, "tracer.call: %s must be %s, not %.100s", name, wanted,
                 Py_TYPE(given)->tp_name);
    return -1;
}

static int ch_check_arguments(PyObject *op_name, PyObject *inputs, PyObject *attributes,
                              PyObject *display_name, PyObject *project) {
    if (!PyUnicode_Check(op_name)) return ch_wrong_type("op_name", "a str", op_name);
    if (!PyDict_Check(inputs))
        return ch_wrong_type("inputs", "a dict of argument name to value", inputs);
    if (!PyDict_Check(attributes)) return ch_wrong_type("attributes", "a dict", attributes);
    if (display_name != Py_None && !PyUnicode_Check(display_name))
        return ch_wrong_type("display_name", "a str or None", display_name);
    if (!PyUnicode_Check(project)) return ch_wrong_type("project", "a str", project);
    return 0;
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
    if (ch_check_arguments(op_name, inputs, attributes, display_name, project) < 0) return -1;
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

/* Write through the tracer's call_start / call_end; what raised an Exception goes to
 * write_safely(tracer, item, "start" | "end", error) (engine/producer/_safe.py: a sanitised
 * copy, or the call dropped and logged), which never raises one. Returns a new reference:
 * something true when written, False when dropped; NULL on a BaseException. */
static PyObject *ch_write(CallHandle *self, PyObject *item, int is_end) {
    if (self->tracer == NULL) {
        PyErr_SetString(PyExc_AttributeError, "this call handle has no tracer");
        return NULL;
    }
    PyObject *done = PyObject_TypeCheck(self->tracer, &TracerCallsType)
        ? tc_call((TracerCalls *)self->tracer, item, is_end)
        : PyObject_CallMethod(self->tracer, is_end ? "call_end" : "call_start", "O", item);
    if (done != NULL || !PyErr_ExceptionMatches(PyExc_Exception)) return done;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) PyException_SetTraceback(value, tb);
    PyObject *args[4] = {self->tracer, item, is_end ? str_what_end : str_what_start,
                         value ? value : Py_None};
    done = PyObject_Vectorcall(write_safely_func, args, 4, NULL);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return done;
}

static PyObject *ch_begin(CallHandle *self, PyObject *unused) {
    if (current_var == NULL || start_type == NULL || open_calls == NULL) {
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
    int epoch = writes_epoch;
    writes_in_flight[epoch]++;
    my_writes_in_flight[epoch]++;
    PyObject *written = ch_write(self, start, 0);
    Py_DECREF(start);
    int started = written != NULL && written != Py_False, bad = written == NULL;
    Py_XDECREF(written);
    if (!bad && !started) Py_XSETREF(self->id, Py_NewRef(Py_None));  /* not started */
    else if (started && PyDict_SetItem(open_calls, (PyObject *)self, Py_None) < 0) bad = 1;
    writes_in_flight[epoch]--;
    my_writes_in_flight[epoch]--;
    if (bad) return NULL;
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
    if (current_var == NULL || end_type == NULL || open_calls == NULL) {
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
    if (self->id == Py_None) Py_RETURN_NONE;  /* its start was dropped: no end without one */
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
    /* taken from the open calls and written as one step for the engine's close */
    int epoch = writes_epoch;
    writes_in_flight[epoch]++;
    my_writes_in_flight[epoch]++;
    if (PyDict_DelItem(open_calls, (PyObject *)self) < 0) {
        writes_in_flight[epoch]--;
        my_writes_in_flight[epoch]--;
        Py_DECREF(end);
        /* not open: the engine's close ended it (or this is a second __exit__) */
        if (!PyErr_ExceptionMatches(PyExc_KeyError)) return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *written = ch_write(self, end, 1);
    writes_in_flight[epoch]--;
    my_writes_in_flight[epoch]--;
    Py_DECREF(end);
    if (written == NULL) return NULL;
    Py_DECREF(written);
    Py_RETURN_NONE;
}

/* writes_cut() -> the epoch of the writes begun so far; later ones count apart */
PyObject *native_writes_cut(PyObject *self, PyObject *unused) {
    int epoch = writes_epoch;
    writes_epoch ^= 1;
    return PyLong_FromLong(epoch);
}

/* writes_before(epoch) -> how many of the starts and ends C handles of other threads began
 * in that epoch are still being written (those threads hold or wait for the GIL) */
PyObject *native_writes_before(PyObject *self, PyObject *arg) {
    long epoch = PyLong_AsLong(arg);
    if (epoch == -1 && PyErr_Occurred()) return NULL;
    if (epoch != 0 && epoch != 1) {
        PyErr_SetString(PyExc_ValueError, "writes_before(epoch): an epoch of writes_cut()");
        return NULL;
    }
    return PyLong_FromLong(writes_in_flight[epoch] - my_writes_in_flight[epoch]);
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

/* summary: a dict, checked when set (as the arguments are in ch_init) */
static PyObject *ch_get_summary(CallHandle *self, void *unused) {
    return Py_NewRef(OR_NONE(self->summary));
}

static int ch_set_summary(CallHandle *self, PyObject *value, void *unused) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "call.summary cannot be deleted: set it to {}");
        return -1;
    }
    if (!PyDict_Check(value)) {
        PyErr_Format(PyExc_TypeError, "call.summary must be a dict, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_XSETREF(self->summary, Py_NewRef(value));
    return 0;
}

static PyGetSetDef ch_getset[] = {
    {"summary", (getter)ch_get_summary, (setter)ch_set_summary,
     "the call's summary (a dict): set it", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef ch_members[] = {
    {"id", T_OBJECT, offsetof(CallHandle, id), 0, "the call id (set when it starts)"},
    {"trace_id", T_OBJECT, offsetof(CallHandle, trace_id), 0, NULL},
    {"parent_id", T_OBJECT, offsetof(CallHandle, parent_id), 0, NULL},
    {"op_name", T_OBJECT, offsetof(CallHandle, op_name), 0, NULL},
    {"started_at", T_OBJECT, offsetof(CallHandle, started_at), 0, NULL},
    {"output", T_OBJECT, offsetof(CallHandle, output), 0, "what the call returned: set it"},
    {"inputs", T_OBJECT, offsetof(CallHandle, inputs), 0, NULL},
    {"attributes", T_OBJECT, offsetof(CallHandle, attributes), 0, NULL},
    {"display_name", T_OBJECT, offsetof(CallHandle, display_name), 0, NULL},
    {"_token", T_OBJECT, offsetof(CallHandle, token), 0, NULL},
    {"_project", T_OBJECT, offsetof(CallHandle, project), 0, NULL},
    {"_tracer", T_OBJECT, offsetof(CallHandle, tracer), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject CallHandleType = {
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
    .tp_getset = ch_getset,
};

/* call_handle_setup(current_var, describe, write_safely, open_calls): the context variable
 * of the current call, the function that turns an exception into the end's text, the one a
 * write that raised goes to (see ch_write), and the dict of the calls started and not ended
 * (a handle is in it from its start written to its __exit__). */
PyObject *native_call_handle_setup(PyObject *self, PyObject *args) {
    PyObject *var, *describe, *write_safely, *open;
    if (!PyArg_ParseTuple(args, "OOOO", &var, &describe, &write_safely, &open)) return NULL;
    if (!PyContextVar_CheckExact(var) || !PyCallable_Check(describe) ||
        !PyCallable_Check(write_safely) || !PyDict_CheckExact(open)) {
        PyErr_SetString(PyExc_TypeError,
                        "call_handle_setup(ContextVar, callable, callable, dict)");
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
    Py_XSETREF(write_safely_func, Py_NewRef(write_safely));
    Py_XSETREF(open_calls, Py_NewRef(open));
    Py_RETURN_NONE;
}

static void calls_after_fork_in_child(void) {
    for (int e = 0; e < 2; e++)  /* the threads writing them are the parent's */
        writes_in_flight[e] = my_writes_in_flight[e] = 0;
}

int calls_init(void) {
    if (pthread_atfork(NULL, NULL, calls_after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return -1;
    }
    str_what_start = PyUnicode_InternFromString("start");
    str_what_end = PyUnicode_InternFromString("end");
    if (str_what_start == NULL || str_what_end == NULL) return -1;
    str_fast_failed = PyUnicode_InternFromString("_fast_failed");
    str_start_rest = PyUnicode_InternFromString("_call_start_rest");
    str_end_rest = PyUnicode_InternFromString("_call_end_rest");
    if (str_fast_failed == NULL || str_start_rest == NULL || str_end_rest == NULL) return -1;
    if (PyType_Ready(&TracerCallsType) < 0) return -1;
    return PyType_Ready(&CallHandleType);
}
