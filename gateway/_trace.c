/* gateway._trace: the steps of tracing where even compiled Python makes too many objects.
 *
 * new_traceparent(pool, slot, below, sample_all) -> str | None
 *     The `traceparent` header line of a new trace, "traceparent: 00-<trace-id>-<span-id>-<flags>\r\n"
 *     (70 characters), from the 24 random bytes of `pool`'s `slot` (at slot * 24: 16 for the
 *     trace-id, 8 for the span-id), sampled ("01") when `sample_all` or when the trace-id's low
 *     64 bits (big-endian) are below `below`, as OpenTelemetry's TraceIdRatioBased decides. None
 *     when either id is all zeros (invalid in W3C Trace Context; the caller takes the next
 *     slot). The twin is gateway.tracecontext.new_traceparent_py; a new trace that is sampled
 *     runs this (one str, against three strs and a format in Python).
 *
 * quiet_traceparent(headers, pool, slot, below) -> str | None
 *     The common case of a `tracing:` gateway in one call: the request's header list (lower-case
 *     names) has no `traceparent`, and the new trace from the ids of `slot` is valid and not
 *     sampled (its trace-id's low 64 bits are not below the bound, given as its 8 big-endian
 *     bytes `below`, so that no int is made per call): its line, ending "-00\r\n".
 *     None in every other case (an incoming context, a sampled or invalid new trace, an input
 *     that is not exactly a list of (bytes, bytes) tuples), which the caller leaves to the full
 *     path (gateway/tracecontext.py, RequestTracer.begin). The twin is
 *     gateway.tracecontext.quiet_traceparent_py. No object is made but the line.
 *
 * encode_span(trace_id, span_id, parent, state, name, kind, start, end, attributes, error,
 *             remote) -> bytes | None
 *     One OTLP Span message in protobuf's wire format (the twin is gateway.otlp.encode_span_py,
 *     byte for byte; tests/test_otlp.py holds both to the OpenTelemetry SDK's encoder): the
 *     lengths are worked out first, then the message is written once into its bytes object.
 *
 * Where the compiler has portable vector types (GCC 12+, clang), an id's hex digits are written
 * 16 at once; -DGATEWAY_NO_VECTORS builds the scalar code instead (the same output).
 *
 * Inputs these functions do not take return None (never raise) and the caller runs the Python
 * twin, which gives the answer or the exception Python would: a subclass or another type, an id
 * that is not exactly 16 hex digits, a str that is not UTF-8-encodable, a number out of range.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_text.h"

#include <stdint.h>
#include <string.h>

/* Each byte's two lower-case hex digits, filled in when the module is loaded. */
static char HEX_PAIRS[256][2];

#define ID_BYTES 24    /* trace-id (16) and span-id (8) */
#define LINE_CHARS 70  /* "traceparent: 00-" 32 "-" 16 "-00\r\n" */

/* The 24 id bytes of `pool`'s slot (at slot * 24; an exact bytes object and an exact int): 1
 * with *id set, 0 when there are no such bytes or the inputs are left to the twin. */
static int
ids_at(PyObject *pool, PyObject *slot_obj, const unsigned char **id)
{
    if (!PyBytes_CheckExact(pool) || !PyLong_CheckExact(slot_obj)) {
        return 0;
    }
    Py_ssize_t slot = PyLong_AsSsize_t(slot_obj);
    if (slot == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(pool);
    if (slot < 0 || size < ID_BYTES || slot > (size - ID_BYTES) / ID_BYTES) {
        return 0;
    }
    *id = (const unsigned char *)PyBytes_AS_STRING(pool) + slot * ID_BYTES;
    return 1;
}

/* An exact int within [0, 2**64); 0 otherwise. */
static int
uint64_of(PyObject *obj, uint64_t *out)
{
    if (!PyLong_CheckExact(obj)) {
        return 0;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = (uint64_t)v;
    return 1;
}

/* The value of 8 bytes read as a big-endian number (`raw`: the bytes as memcpy loaded them) */
static inline uint64_t
big_endian(uint64_t raw)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap64(raw);
#elif defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return raw;
#else
    unsigned char bytes[8];
    uint64_t value = 0;
    memcpy(bytes, &raw, 8);
    for (int i = 0; i < 8; i++) {
        value = (value << 8) | bytes[i];
    }
    return value;
#endif
}

/* Whether both ids are valid (not all zeros); *low: the trace-id's low 64 bits, big-endian */
static int
valid_ids(const unsigned char *id, uint64_t *low)
{
    uint64_t high, bits, span;
    memcpy(&high, id, 8);
    memcpy(&bits, id + 8, 8);
    memcpy(&span, id + 16, 8);
    *low = big_endian(bits);
    return (high | bits) != 0 && span != 0;
}

#if !defined(GATEWAY_NO_VECTORS) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
/* Hex digits 16 at a time with the compilers' portable vector types (SSE2 on x86-64, NEON on
 * arm64): nibbles split, interleaved high-low, mapped to '0'-'9' / 'a'-'f'. */
typedef unsigned char bytes16 __attribute__((vector_size(16)));

static inline bytes16
digits_of(bytes16 nibbles)
{
    bytes16 letters = (bytes16)(nibbles > 9) & ('a' - '0' - 10);
    return nibbles + '0' + letters;
}

/* The 2 * `size` hex digits of `in` (size 8 or 16) at `w` */
static inline void
put_hex(Py_UCS1 *w, const unsigned char *in, int size)
{
    bytes16 x = {0};
    memcpy(&x, in, (size_t)size);
    bytes16 high = x >> 4, low = x & 0xf;
    bytes16 first = __builtin_shufflevector(high, low, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21,
                                            6, 22, 7, 23);
    first = digits_of(first);
    memcpy(w, &first, 16);
    if (size == 16) {
        bytes16 second = __builtin_shufflevector(high, low, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28,
                                                 13, 29, 14, 30, 15, 31);
        second = digits_of(second);
        memcpy(w + 16, &second, 16);
    }
}
#else
static inline void
put_hex(Py_UCS1 *w, const unsigned char *in, int size)
{
    for (int i = 0; i < size; i++, w += 2) {
        memcpy(w, HEX_PAIRS[in[i]], 2);
    }
}
#endif

/* The 70-character header line of the ids, sampled or not */
static PyObject *
line_of(const unsigned char *id, int sampled)
{
    PyObject *line = PyUnicode_New(LINE_CHARS, 127);
    if (line == NULL) {
        return NULL;
    }
    Py_UCS1 *w = PyUnicode_1BYTE_DATA(line);
    memcpy(w, "traceparent: 00-", 16);
    put_hex(w + 16, id, 16);
    w[48] = '-';
    put_hex(w + 49, id + 16, 8);
    memcpy(w + 65, sampled ? "-01\r\n" : "-00\r\n", 5);
    return line;
}

static PyObject *
new_traceparent(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "new_traceparent() takes 4 arguments");
        return NULL;
    }
    const unsigned char *id;
    uint64_t below, low;
    if (!ids_at(args[0], args[1], &id) || !uint64_of(args[2], &below)) {
        Py_RETURN_NONE;
    }
    int sample_all = PyObject_IsTrue(args[3]);
    if (sample_all < 0) {
        return NULL;
    }
    if (!valid_ids(id, &low)) {
        Py_RETURN_NONE;
    }
    return line_of(id, sample_all || low < below);
}

/* Whether the header list (lower-case names) has a `traceparent` field: 1, 0, or -1 when it
 * is not a list of (bytes, bytes) tuples (left to the twin) */
static int
has_traceparent(PyObject *headers)
{
    if (!PyList_CheckExact(headers)) {
        return -1;
    }
    Py_ssize_t count = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *field = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(field) || PyTuple_GET_SIZE(field) != 2) {
            return -1;
        }
        PyObject *name = PyTuple_GET_ITEM(field, 0);
        if (!PyBytes_CheckExact(name)) {
            return -1;
        }
        if (PyBytes_GET_SIZE(name) == 11 && memcmp(PyBytes_AS_STRING(name), "traceparent", 11) == 0) {
            return 1;
        }
    }
    return 0;
}

static PyObject *
quiet_traceparent(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "quiet_traceparent() takes 4 arguments");
        return NULL;
    }
    const unsigned char *id;
    uint64_t low, bound;
    PyObject *below = args[3];
    if (has_traceparent(args[0]) != 0 || !ids_at(args[1], args[2], &id)
        || !PyBytes_CheckExact(below) || PyBytes_GET_SIZE(below) != 8 || !valid_ids(id, &low)) {
        Py_RETURN_NONE;
    }
    memcpy(&bound, PyBytes_AS_STRING(below), 8);
    if (low < big_endian(bound)) {
        Py_RETURN_NONE; /* sampled: the full path records it */
    }
    return line_of(id, 0);
}

/* ------------------------------------------------------------------------------ OTLP spans */

static int
hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20; /* bytes.fromhex takes both cases */
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* An 8-byte id from exactly 16 hex digits (an exact str); 0 otherwise. */
static int
span_id_of(PyObject *obj, unsigned char out[8])
{
    if (!PyUnicode_CheckExact(obj) || !PyUnicode_IS_COMPACT_ASCII(obj)
        || PyUnicode_GET_LENGTH(obj) != 16) {
        return 0;
    }
    const unsigned char *s = (const unsigned char *)PyUnicode_DATA(obj);
    for (int i = 0; i < 8; i++) {
        int hi = hex_digit(s[2 * i]), lo = hex_digit(s[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return 0;
        }
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 1;
}

static size_t
varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static unsigned char *
put_varint(unsigned char *w, uint64_t v)
{
    while (v >= 0x80) {
        *w++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *w++ = (unsigned char)v;
    return w;
}

static unsigned char *
put_le(unsigned char *w, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) {
        *w++ = (unsigned char)(v >> (8 * i));
    }
    return w;
}

/* A length-delimited field: tag, length, payload. */
static unsigned char *
put_field(unsigned char *w, unsigned char tag, const char *data, size_t size)
{
    *w++ = tag;
    w = put_varint(w, size);
    memcpy(w, data, size);
    return w + size;
}

/* One attribute's value, as an AnyValue: string_value (1), bool_value (2) or int_value (3). */
typedef struct {
    text key;
    int kind; /* 1 str, 2 bool, 3 int */
    text str;
    uint64_t number;
    size_t any_size; /* the AnyValue message */
    size_t kv_size;  /* the KeyValue message */
} attribute;

/* The attribute's sizes; 0 for a key or value the Python twin must handle. */
static int
attribute_of(PyObject *key, PyObject *value, attribute *a)
{
    if (!utf8_of(key, &a->key)) {
        return 0;
    }
    if (PyUnicode_CheckExact(value)) {
        if (!utf8_of(value, &a->str)) {
            return 0;
        }
        a->kind = 1;
        a->any_size = 1 + varint_size((uint64_t)a->str.size) + (size_t)a->str.size;
    }
    else if (PyBool_Check(value)) {
        a->kind = 2;
        a->number = value == Py_True;
        a->any_size = 2;
    }
    else if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        a->kind = 3;
        a->number = (uint64_t)v; /* two's complement: a negative int64 is 10 bytes */
        a->any_size = 1 + varint_size(a->number);
    }
    else {
        return 0;
    }
    size_t key_field = 1 + varint_size((uint64_t)a->key.size) + (size_t)a->key.size;
    a->kv_size = key_field + 1 + varint_size(a->any_size) + a->any_size;
    return 1;
}

static unsigned char *
put_attribute(unsigned char *w, const attribute *a)
{
    *w++ = 0x4a; /* Span.attributes (9) */
    w = put_varint(w, a->kv_size);
    w = put_field(w, 0x0a, a->key.data, (size_t)a->key.size); /* KeyValue.key (1) */
    *w++ = 0x12;                                              /* KeyValue.value (2) */
    w = put_varint(w, a->any_size);
    if (a->kind == 1) {
        w = put_field(w, 0x0a, a->str.data, (size_t)a->str.size);
    }
    else {
        *w++ = a->kind == 2 ? 0x10 : 0x18;
        w = put_varint(w, a->number);
    }
    return w;
}

#define STACK_ATTRIBUTES 16

static PyObject *
encode_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "encode_span() takes 11 arguments");
        return NULL;
    }
    PyObject *trace_id = args[0], *parent = args[2], *attributes = args[8];
    unsigned char span_id[8], parent_id[8];
    text state, name;
    uint64_t kind, start, end;
    if (!PyBytes_CheckExact(trace_id) || PyBytes_GET_SIZE(trace_id) != 16
        || !span_id_of(args[1], span_id)
        || (parent != Py_None && !span_id_of(parent, parent_id))
        || !utf8_of(args[3], &state) || !utf8_of(args[4], &name)
        || !uint64_of(args[5], &kind) || kind > 3
        || !uint64_of(args[6], &start) || !uint64_of(args[7], &end)
        || !PyDict_CheckExact(attributes)
        || !PyBool_Check(args[9]) || !PyBool_Check(args[10])) {
        Py_RETURN_NONE;
    }
    int error = args[9] == Py_True, remote = args[10] == Py_True;

    attribute stack[STACK_ATTRIBUTES];
    attribute *attrs = stack;
    Py_ssize_t count = PyDict_GET_SIZE(attributes);
    if (count > STACK_ATTRIBUTES) {
        attrs = PyMem_New(attribute, (size_t)count);
        if (attrs == NULL) {
            return PyErr_NoMemory();
        }
    }
    PyObject *result = NULL;
    size_t size = 18 + 10; /* trace_id, span_id */
    if (state.size > 0) {
        size += 1 + varint_size((uint64_t)state.size) + (size_t)state.size;
    }
    if (parent != Py_None) {
        size += 10;
    }
    size += 1 + varint_size((uint64_t)name.size) + (size_t)name.size;
    size += 2 + 9 + 9; /* kind, start, end */
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        if (i >= count || !attribute_of(key, value, &attrs[i])) {
            result = Py_None;
            goto done;
        }
        size += 1 + varint_size(attrs[i].kv_size) + attrs[i].kv_size;
        i++;
    }
    size += (error ? 4 : 2) + 6; /* status, flags */

    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (result == NULL) {
        goto done;
    }
    unsigned char *w = (unsigned char *)PyBytes_AS_STRING(result);
    *w++ = 0x0a; /* trace_id (1) */
    *w++ = 16;
    memcpy(w, PyBytes_AS_STRING(trace_id), 16);
    w += 16;
    *w++ = 0x12; /* span_id (2) */
    *w++ = 8;
    memcpy(w, span_id, 8);
    w += 8;
    if (state.size > 0) {
        w = put_field(w, 0x1a, state.data, (size_t)state.size); /* trace_state (3) */
    }
    if (parent != Py_None) {
        *w++ = 0x22; /* parent_span_id (4) */
        *w++ = 8;
        memcpy(w, parent_id, 8);
        w += 8;
    }
    w = put_field(w, 0x2a, name.data, (size_t)name.size); /* name (5) */
    *w++ = 0x30;                                           /* kind (6) */
    *w++ = (unsigned char)kind;
    *w++ = 0x39; /* start_time_unix_nano (7), fixed64 */
    w = put_le(w, start, 8);
    *w++ = 0x41; /* end_time_unix_nano (8), fixed64 */
    w = put_le(w, end, 8);
    for (Py_ssize_t j = 0; j < i; j++) {
        w = put_attribute(w, &attrs[j]);
    }
    *w++ = 0x7a; /* status (15): empty, or code ERROR (2) */
    if (error) {
        *w++ = 2;
        *w++ = 0x18;
        *w++ = 2;
    }
    else {
        *w++ = 0;
    }
    *w++ = 0x85; /* flags (16), fixed32: has is-remote (0x100), is remote (0x200) */
    *w++ = 0x01;
    w = put_le(w, remote ? 0x300 : 0x100, 4);
    if ((size_t)(w - (unsigned char *)PyBytes_AS_STRING(result)) != size) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_SystemError, "gateway._trace.encode_span: size mismatch");
        result = NULL;
    }
done:
    if (attrs != stack) {
        PyMem_Free(attrs);
    }
    if (result == Py_None) {
        Py_RETURN_NONE;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"new_traceparent", (PyCFunction)(void (*)(void))new_traceparent, METH_FASTCALL,
     "new_traceparent(pool, slot, below, sample_all, /)\n--\n\n"
     "The traceparent header line of a new trace from the 24 bytes of pool's slot "
     "(gateway.tracecontext.new_traceparent_py's twin), or None."},
    {"quiet_traceparent", (PyCFunction)(void (*)(void))quiet_traceparent, METH_FASTCALL,
     "quiet_traceparent(headers, pool, slot, below, /)\n--\n\n"
     "The traceparent header line of a new trace that is not sampled, for a request without a "
     "traceparent (gateway.tracecontext.quiet_traceparent_py's twin), or None."},
    {"encode_span", (PyCFunction)(void (*)(void))encode_span, METH_FASTCALL,
     "encode_span(trace_id, span_id, parent, state, name, kind, start, end, attributes, error, "
     "remote, /)\n--\n\n"
     "One OTLP Span message (gateway.otlp.encode_span_py's twin), or None for an input left to "
     "the twin."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway._trace",
    .m_doc = "Trace context and OTLP spans in C (gateway/tracecontext.py and gateway/otlp.py "
             "have the Python twins).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__trace(void)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 256; i++) {
        HEX_PAIRS[i][0] = digits[i >> 4];
        HEX_PAIRS[i][1] = digits[i & 0xf];
    }
    return PyModuleDef_Init(&module_def);
}
