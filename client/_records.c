/* The list getmany() hands out, built in C and out of the cyclic collector's sight.
 *
 * build_records(cls, topic, partition, offsets, keys, values, timestamps, headers,
 * start, stop) -> list gives, for each j in range(start, stop),
 * cls(topic, partition, offsets[j], keys[j], values[j], timestamps[j],
 * dict(headers[j])): exactly what shoal.client.records.build_records_python gives
 * (the tests compare the two; records.py falls back to it when this module was not built).
 *
 * Why: a Record is a tuple subclass, and CPython keeps every tuple subclass tracked by
 * its cyclic collector for life, so a list of thousands sets off a young collection
 * every 700 of them and walks them all again in the older generations; that cost more
 * than building them. A record whose headers dict is untracked (empty, or holding only
 * str and bytes, as every decoded one does) refers to nothing that can form a cycle,
 * so it is untracked here, as CPython untracks a plain tuple of atomic values. The one
 * difference: CPython never untracks a tuple holding a dict, since the dict may later
 * be given a container; a cycle made through a record's headers is then not collected.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum { OFFSETS, KEYS, VALUES, TIMESTAMPS, HEADERS, COLUMNS };

static PyObject *build_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "build_records takes 10 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *cls = args[0], *topic = args[1], *partition = args[2];
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "build_records: cls must be a tuple subclass");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[8]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t stop = PyLong_AsSsize_t(args[9]);
    if (stop == -1 && PyErr_Occurred())
        return NULL;
    PyObject *columns[COLUMNS];
    for (int c = 0; c < COLUMNS; c++) {
        columns[c] = args[3 + c];
        if (!PyList_CheckExact(columns[c]) || start < 0 || stop < start || PyList_GET_SIZE(columns[c]) < stop) {
            PyErr_SetString(PyExc_ValueError, "build_records: each column must be a list holding [start, stop)");
            return NULL;
        }
    }
    for (Py_ssize_t j = start; j < stop; j++) {
        if (!PyDict_Check(PyList_GET_ITEM(columns[HEADERS], j))) {
            PyErr_SetString(PyExc_TypeError, "build_records: headers must be dicts");
            return NULL;
        }
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    PyObject *out = PyList_New(stop - start);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t j = start; j < stop; j++) {
        PyObject *headers = PyDict_Copy(PyList_GET_ITEM(columns[HEADERS], j));
        if (headers == NULL)
            goto error;
        PyObject *record = type->tp_alloc(type, 7);
        if (record == NULL) {
            Py_DECREF(headers);
            goto error;
        }
        PyTuple_SET_ITEM(record, 0, Py_NewRef(topic));
        PyTuple_SET_ITEM(record, 1, Py_NewRef(partition));
        for (int c = OFFSETS; c < HEADERS; c++)
            PyTuple_SET_ITEM(record, 2 + c, Py_NewRef(PyList_GET_ITEM(columns[c], j)));
        PyTuple_SET_ITEM(record, 6, headers);
        int atomic = 1;
        for (Py_ssize_t k = 0; k < 7 && atomic; k++)
            atomic = !PyObject_GC_IsTracked(PyTuple_GET_ITEM(record, k));
        if (atomic && PyObject_GC_IsTracked(record))
            PyObject_GC_UnTrack(record);
        PyList_SET_ITEM(out, j - start, record);
    }
    return out;
error:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"build_records", (PyCFunction)(void (*)(void))build_records, METH_FASTCALL,
     "build_records(cls, topic, partition, offsets, keys, values, timestamps, headers, start, stop) -> list"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_records", "getmany()'s Record lists, built in C.", -1, methods};

PyMODINIT_FUNC PyInit__records(void)
{
    return PyModule_Create(&module);
}
