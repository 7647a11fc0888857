/* Kafka's partition hash, compiled: the hot path of keyed send().
 *
 * key_hash(key: bytes) -> int is Utils.toPositive(Utils.murmur2(key)) of Kafka's
 * Java client: the 32-bit MurmurHash2 with seed 0x9747b28c, top bit cleared. It must
 * give exactly what shoal.client.partitioner.murmur2_python gives (the tests compare
 * the two); the partitioner falls back to that one when this module was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static uint32_t murmur2(const unsigned char *data, Py_ssize_t length)
{
    const uint32_t m = 0x5bd1e995;
    uint32_t h = 0x9747b28cu ^ (uint32_t)length;
    Py_ssize_t i = 0;
    for (; i + 4 <= length; i += 4) {
        uint32_t k = (uint32_t)data[i] | ((uint32_t)data[i + 1] << 8) | ((uint32_t)data[i + 2] << 16)
                     | ((uint32_t)data[i + 3] << 24);
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (length - i) {
    case 3:
        h ^= (uint32_t)data[i + 2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)data[i + 1] << 8;
        /* fall through */
    case 1:
        h ^= (uint32_t)data[i];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

static PyObject *key_hash(PyObject *module, PyObject *key)
{
    if (!PyBytes_Check(key)) {
        PyErr_Format(PyExc_TypeError, "key must be bytes, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    uint32_t h = murmur2((const unsigned char *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
    return PyLong_FromUnsignedLong(h & 0x7fffffffu);
}

static PyMethodDef methods[] = {
    {"key_hash", key_hash, METH_O, "Kafka's toPositive(murmur2(key)) of a bytes key."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_murmur2", NULL, 0, methods};

PyMODINIT_FUNC PyInit__murmur2(void) { return PyModule_Create(&module); }
