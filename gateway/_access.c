/* gateway._access: the JSON access line (gateway/logs.py, access_line) written in C.
 *
 * The twin of gateway.logs.access_line_py, byte for byte (tests/test_access_log.py holds it to
 * that): the same keys in the same order, str values escaped as orjson escapes them (`"`, `\`,
 * control characters as \b \t \n \f \r or \u00xx; DEL and non-ASCII as raw UTF-8), ints in
 * decimal, duration_ms from whole microseconds with 3 decimals (floor division, as Python's //).
 * The trace-id is read from the request's `traceparent` header line as the twin slices it
 * (characters 16 to 48), so that the caller makes no str for it.
 *
 * The test for bytes to escape looks at 16 bytes at once where the compiler has portable vector
 * types (GCC, clang), else 8 (-DGATEWAY_NO_VECTORS builds that scalar code: the same output).
 *
 * The line is written into a stack buffer when its worst case fits (every string byte escaped to
 * 6 bytes), else into a heap buffer of that worst case, and copied once into the bytes object.
 *
 * Inputs it does not take return None instead of raising, and the caller (gateway.logs) then
 * runs the Python twin, which gives the answer or the exception Python would: a str that is not
 * UTF-8-encodable (lone surrogates), a str or int subclass, another type, an int outside int64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_text.h"

#include <stdint.h>
#include <string.h>

#define STACK_LINE 2048
#define INT_TEXT 20 /* "-9223372036854775808" */
#define FIXED_MAX 256 /* the keys, quotes, commas, braces, "null", the 3 decimals: 163 bytes */

/* 0: written as it is; else the second byte of its two-byte escape, or 'u' for \u00xx. */
static const char ESCAPE[256] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
    0,   0,   '"', 0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   '\\', 0,  0,   0,
    /* 0x60-0xff: nothing */
};

static const char HEX[] = "0123456789abcdef";

/* An exact int within int64; 0 otherwise. */
static int
int64_of(PyObject *obj, long long *out)
{
    int overflow;
    if (!PyLong_CheckExact(obj)) {
        return 0;
    }
    *out = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow != 0 || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static char *
put(char *w, const char *s, size_t n)
{
    memcpy(w, s, n);
    return w + n;
}

#define PUT_LITERAL(w, s) put((w), (s), sizeof(s) - 1)

/* Whether any of the 8 bytes in `x` is escaped: below 0x20, `"` or `\`. The classic
 * "has a zero byte" test (of x ^ '"' and x ^ '\'), and its "has a byte below n" form: exact
 * about whether there is one (a borrow only ever follows a byte that is one). */
static inline int
escapes_in(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t quote = x ^ (ones * '"'), backslash = x ^ (ones * '\\');
    uint64_t found = ((x - ones * 0x20) & ~x) | ((quote - ones) & ~quote)
                     | ((backslash - ones) & ~backslash);
    return (found & highs) != 0;
}

#if !defined(GATEWAY_NO_VECTORS) && defined(__GNUC__)
/* Sixteen bytes at a time with the compilers' portable vector types (SSE2, NEON) */
typedef unsigned char bytes16 __attribute__((vector_size(16)));

static inline int
escapes_in16(const unsigned char *s)
{
    bytes16 x;
    memcpy(&x, s, 16);
    bytes16 found = (bytes16)(x < 0x20) | (bytes16)(x == '"') | (bytes16)(x == '\\');
    uint64_t halves[2];
    memcpy(halves, &found, 16);
    return (halves[0] | halves[1]) != 0;
}
#endif

/* The string's bytes escaped as in a JSON string literal (no quotes): at most 6 bytes each.
 * Sixteen, then eight bytes at a time while none of them is escaped (ids, paths, addresses),
 * then runs of bytes written as they are between escaped ones. */
static char *
put_escaped(char *w, const text *t)
{
    const unsigned char *s = (const unsigned char *)t->data;
    const unsigned char *end = s + t->size;
#if !defined(GATEWAY_NO_VECTORS) && defined(__GNUC__)
    while (end - s >= 16 && !escapes_in16(s)) {
        memcpy(w, s, 16);
        w += 16;
        s += 16;
    }
#endif
    while (end - s >= 8) {
        uint64_t x;
        memcpy(&x, s, 8);
        if (escapes_in(x)) {
            break;
        }
        memcpy(w, &x, 8);
        w += 8;
        s += 8;
    }
    while (s < end) {
        const unsigned char *run = s;
        while (s < end && ESCAPE[*s] == 0) {
            s++;
        }
        w = put(w, (const char *)run, (size_t)(s - run));
        if (s == end) {
            break;
        }
        *w++ = '\\';
        *w++ = ESCAPE[*s];
        if (ESCAPE[*s] == 'u') {
            *w++ = '0';
            *w++ = '0';
            *w++ = HEX[*s >> 4];
            *w++ = HEX[*s & 0xf];
        }
        s++;
    }
    return w;
}

static char *
put_quoted(char *w, const text *t)
{
    *w++ = '"';
    w = put_escaped(w, t);
    *w++ = '"';
    return w;
}

/* `value` in decimal, as str(value). */
static char *
put_int(char *w, long long value)
{
    char digits[INT_TEXT];
    char *d = digits + sizeof(digits);
    /* in unsigned arithmetic, so that the most negative value has a magnitude too */
    unsigned long long magnitude =
        value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        *--d = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude != 0);
    if (value < 0) {
        *--d = '-';
    }
    return put(w, d, (size_t)(digits + sizeof(digits) - d));
}


/* The code points [TRACE_ID_START, TRACE_ID_STOP) of a `traceparent` header line (its
 * trace-id, "traceparent: vv-" coming first) out of the line's UTF-8 `t` (valid: no lone
 * surrogates), clipped as a Python slice is. `chars` is the str's length: equal to the byte
 * size when every character is one byte (the gateway's own lines). */
#define TRACE_ID_START 16
#define TRACE_ID_STOP 48

static text
trace_id_in(text t, Py_ssize_t chars)
{
    text id;
    if (chars == t.size) {
        Py_ssize_t start = chars < TRACE_ID_START ? chars : TRACE_ID_START;
        Py_ssize_t stop = chars < TRACE_ID_STOP ? chars : TRACE_ID_STOP;
        id.data = t.data + start;
        id.size = stop - start;
        return id;
    }
    const char *p = t.data, *end = t.data + t.size, *first = end, *last = end;
    Py_ssize_t index = 0;
    for (; p < end; p++) {
        if (((unsigned char)*p & 0xC0) != 0x80) { /* a character starts here */
            if (index == TRACE_ID_START) {
                first = p;
            }
            if (index == TRACE_ID_STOP) {
                last = p;
                break;
            }
            index++;
        }
    }
    id.data = first;
    id.size = last - first;
    return id;
}

static PyObject *
access_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    text request_id, client, method, path, route, upstream, reason, trace_line, trace_id;
    long long status, duration_us, sent, whole_ms, us_left;
    int has_upstream, has_reason, has_trace;
    (void)module;

    if (nargs != 10 && nargs != 11) {
        PyErr_Format(PyExc_TypeError, "access_line takes 10 or 11 arguments (%zd given)", nargs);
        return NULL;
    }
    has_upstream = args[6] != Py_None;
    has_reason = args[9] != Py_None;
    has_trace = nargs == 11 && args[10] != Py_None;
    if (!utf8_of(args[0], &request_id) || !utf8_of(args[1], &client)
        || !utf8_of(args[2], &method) || !utf8_of(args[3], &path) || !utf8_of(args[4], &route)
        || !int64_of(args[5], &status) || (has_upstream && !utf8_of(args[6], &upstream))
        || !int64_of(args[7], &duration_us) || !int64_of(args[8], &sent)
        || (has_reason && !utf8_of(args[9], &reason))
        || (has_trace && !utf8_of(args[10], &trace_line))) {
        Py_RETURN_NONE; /* the Python twin's business */
    }
    if (has_trace) {
        trace_id = trace_id_in(trace_line, PyUnicode_GET_LENGTH(args[10]));
    }

    /* The worst case: the keys and punctuation, four ints, every string byte escaped to 6. */
    size_t strings = (size_t)request_id.size + (size_t)client.size + (size_t)method.size
                     + (size_t)path.size + (size_t)route.size
                     + (has_upstream ? (size_t)upstream.size : 0)
                     + (has_reason ? (size_t)reason.size : 0)
                     + (has_trace ? (size_t)trace_id.size : 0);
    if (strings > ((size_t)PY_SSIZE_T_MAX - FIXED_MAX - 4 * INT_TEXT) / 6) {
        return PyErr_NoMemory();
    }
    size_t bound = FIXED_MAX + 4 * INT_TEXT + 6 * strings;
    char stack[STACK_LINE];
    char *buf = stack;
    if (bound > sizeof(stack)) {
        buf = PyMem_Malloc(bound);
        if (buf == NULL) {
            return PyErr_NoMemory();
        }
    }

    char *w = buf;
    w = PUT_LITERAL(w, "{\"event\":\"access\",\"request_id\":\"");
    w = put_escaped(w, &request_id);
    if (has_trace) {
        w = PUT_LITERAL(w, "\",\"trace_id\":\"");
        w = put_escaped(w, &trace_id);
    }
    w = PUT_LITERAL(w, "\",\"client\":");
    w = put_quoted(w, &client);
    w = PUT_LITERAL(w, ",\"method\":");
    w = put_quoted(w, &method);
    w = PUT_LITERAL(w, ",\"path\":");
    w = put_quoted(w, &path);
    w = PUT_LITERAL(w, ",\"route\":");
    w = put_quoted(w, &route);
    w = PUT_LITERAL(w, ",\"status\":");
    w = put_int(w, status);
    w = PUT_LITERAL(w, ",\"upstream\":");
    if (has_upstream) {
        w = put_quoted(w, &upstream);
    }
    else {
        w = PUT_LITERAL(w, "null");
    }
    /* floor division and a non-negative remainder, as Python's // and % */
    whole_ms = duration_us / 1000;
    us_left = duration_us % 1000;
    if (us_left < 0) {
        us_left += 1000;
        whole_ms -= 1;
    }
    w = PUT_LITERAL(w, ",\"duration_ms\":");
    w = put_int(w, whole_ms);
    *w++ = '.';
    *w++ = (char)('0' + us_left / 100);
    *w++ = (char)('0' + us_left / 10 % 10);
    *w++ = (char)('0' + us_left % 10);
    w = PUT_LITERAL(w, ",\"bytes\":");
    w = put_int(w, sent);
    if (has_reason) {
        w = PUT_LITERAL(w, ",\"reason\":");
        w = put_quoted(w, &reason);
    }
    *w++ = '}';

    PyObject *line = PyBytes_FromStringAndSize(buf, w - buf);
    if (buf != stack) {
        PyMem_Free(buf);
    }
    return line;
}

static PyMethodDef methods[] = {
    {"access_line", (PyCFunction)(void (*)(void))access_line, METH_FASTCALL,
     "access_line(request_id, client, method, path, route, status, upstream, duration_us, sent,"
     " reason, traceparent_line=None, /)\n--\n\n"
     "The JSON access line as bytes (gateway.logs.access_line_py's twin), or None for an input "
     "left to the Python twin (a str that is not UTF-8-encodable, a subclass, an int outside "
     "int64)."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway._access",
    .m_doc = "The JSON access line in C (gateway/logs.py has its Python twin).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__access(void)
{
    return PyModuleDef_Init(&module_def);
}
