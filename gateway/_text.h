/* What the project's C modules (gateway/_access.c, gateway/_trace.c) share: a str's UTF-8. */
#ifndef GATEWAY_TEXT_H
#define GATEWAY_TEXT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    const char *data;
    Py_ssize_t size;
} text;

/* The UTF-8 of an exact str; 0 when it is something else or cannot be encoded (a lone
 * surrogate: the caller leaves such input to its Python twin). */
static inline int
utf8_of(PyObject *obj, text *out)
{
    if (!PyUnicode_CheckExact(obj)) {
        return 0;
    }
    if (PyUnicode_IS_COMPACT_ASCII(obj)) {
        out->data = (const char *)PyUnicode_DATA(obj);
        out->size = PyUnicode_GET_LENGTH(obj);
        return 1;
    }
    out->data = PyUnicode_AsUTF8AndSize(obj, &out->size);
    if (out->data == NULL) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

#endif
