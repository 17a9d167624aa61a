/* The head scanner: a fast path in front of llhttp, the project's own C.
 *
 * scan_request() and scan_response() read one HTTP/1.1 head in a single pass over the read
 * buffer and hand back only what the server needs: the method, the target, the status, the
 * header list with lower-case names, the Content-Length. They accept a strict, simple subset
 * of HTTP/1.1 (the heads that clients and upstreams send every day) and answer REFUSED (-1) for
 * anything else, INCOMPLETE (0) for a head not complete in the buffer: the server then feeds the
 * same bytes to llhttp, which stays the general parser and decides. So this file never makes
 * an error answer; it must only never accept what llhttp would read differently or refuse.
 *
 * gateway/http/scan.py is its pure-Python twin (the same results for every input, held to it
 * and to llhttp by tests/test_scan.py); it runs where this module is not built.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <string.h>

#define INCOMPLETE 0
#define REFUSED (-1)

/* byte classes */
static unsigned char is_tchar[256];  /* RFC 9110 token characters */
static unsigned char is_vchar[256];  /* a field value: HTAB, SP, VCHAR, obs-text */
static unsigned char is_target[256]; /* a request-target: visible ASCII */

/* names with a meaning here; the flag says what */
#define N_PLAIN 0
#define N_REFUSE 1      /* llhttp's business: framing and protocol switches */
#define N_LENGTH 3      /* content-length */

typedef struct {
    const char *name; /* lower case */
    Py_ssize_t size;
    int flag;
    PyObject *obj; /* the shared bytes object handed out for it */
} Name;

static Name names[] = {
    {"host", 0, N_PLAIN, NULL},
    {"user-agent", 0, N_PLAIN, NULL},
    {"accept", 0, N_PLAIN, NULL},
    {"authorization", 0, N_PLAIN, NULL},
    {"content-length", 0, N_LENGTH, NULL},
    {"content-type", 0, N_PLAIN, NULL},
    {"accept-encoding", 0, N_PLAIN, NULL},
    {"accept-language", 0, N_PLAIN, NULL},
    {"accept-ranges", 0, N_PLAIN, NULL},
    {"access-control-allow-origin", 0, N_PLAIN, NULL},
    {"age", 0, N_PLAIN, NULL},
    {"cache-control", 0, N_PLAIN, NULL},
    {"connection", 0, N_PLAIN, NULL},
    {"content-encoding", 0, N_PLAIN, NULL},
    {"content-language", 0, N_PLAIN, NULL},
    {"cookie", 0, N_PLAIN, NULL},
    {"date", 0, N_PLAIN, NULL},
    {"dpop", 0, N_PLAIN, NULL},
    {"etag", 0, N_PLAIN, NULL},
    {"expect", 0, N_PLAIN, NULL},
    {"expires", 0, N_PLAIN, NULL},
    {"if-modified-since", 0, N_PLAIN, NULL},
    {"if-none-match", 0, N_PLAIN, NULL},
    {"keep-alive", 0, N_PLAIN, NULL},
    {"last-modified", 0, N_PLAIN, NULL},
    {"location", 0, N_PLAIN, NULL},
    {"origin", 0, N_PLAIN, NULL},
    {"pragma", 0, N_PLAIN, NULL},
    {"proxy-connection", 0, N_PLAIN, NULL},
    {"referer", 0, N_PLAIN, NULL},
    {"server", 0, N_PLAIN, NULL},
    {"set-cookie", 0, N_PLAIN, NULL},
    {"traceparent", 0, N_PLAIN, NULL},
    {"tracestate", 0, N_PLAIN, NULL},
    {"transfer-encoding", 0, N_REFUSE, NULL},
    {"upgrade", 0, N_REFUSE, NULL},
    {"vary", 0, N_PLAIN, NULL},
    {"via", 0, N_PLAIN, NULL},
    {"x-forwarded-for", 0, N_PLAIN, NULL},
    {"x-forwarded-host", 0, N_PLAIN, NULL},
    {"x-forwarded-proto", 0, N_PLAIN, NULL},
    {"x-request-id", 0, N_PLAIN, NULL},
    {"x-appsecret-proof", 0, N_PLAIN, NULL},
    {"x-appsecret-time", 0, N_PLAIN, NULL},
};
#define N_NAMES ((int)(sizeof(names) / sizeof(names[0])))

/* the methods of the subset, as the str objects the server uses */
static const char *method_names[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
#define N_METHODS ((int)(sizeof(method_names) / sizeof(method_names[0])))
static PyObject *method_objs[N_METHODS];

static inline unsigned char lower(unsigned char c) {
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* the common names by length: candidates[size] lists their indexes (-1 ends the list) */
#define MAX_NAME 32
#define MAX_SAME_SIZE 8
static int candidates[MAX_NAME + 1][MAX_SAME_SIZE + 1];

/* The common name `s[0:size]` is (case-insensitively), or -1. */
static int find_name(const unsigned char *s, Py_ssize_t size) {
    if (size > MAX_NAME) {
        return -1;
    }
    for (const int *i = candidates[size]; *i >= 0; i++) {
        const char *n = names[*i].name;
        Py_ssize_t k = 0;
        while (k < size && n[k] == (char)lower(s[k])) {
            k++;
        }
        if (k == size) {
            return *i;
        }
    }
    return -1;
}

/* Content-Length: 1..18 digits, or -1 */
static long long parse_length(const unsigned char *s, Py_ssize_t size) {
    if (size < 1 || size > 18) {
        return -1;
    }
    long long n = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        n = n * 10 + (s[i] - '0');
    }
    return n;
}

/* The header lines from `p` up to the empty line (the buffer's NUL terminator stops every
 * loop at its end). Appends (lower name, value) tuples to `out`; sets *length (-1: none) and
 * *end (after the empty line). Returns 1, or 0 when the head is not one of the subset or not
 * complete (the caller tells which), or -1 with a Python error set. */
static int scan_fields(const unsigned char *p, Py_ssize_t max_count, Py_ssize_t max_bytes,
                       PyObject *out, long long *length, const unsigned char **end) {
    Py_ssize_t count = 0, total = 0;
    int lengths = 0;
    *length = -1;
    if (max_count < 0 || max_bytes < 0) {
        return 0; /* even no field is within such limits */
    }
    while (!(p[0] == '\r' && p[1] == '\n')) {
        const unsigned char *name = p;
        while (is_tchar[*p]) {
            p++;
        }
        Py_ssize_t name_size = p - name;
        if (name_size == 0 || *p != ':') {
            return 0;
        }
        p++;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        const unsigned char *value = p;
        while (is_vchar[*p]) {
            p++;
        }
        if (p[0] != '\r' || p[1] != '\n') {
            return 0; /* a CTL, DEL, bare CR or bare LF, or the end of the buffer */
        }
        Py_ssize_t value_size = p - value;
        if (value_size && (p[-1] == ' ' || p[-1] == '\t')) {
            return 0; /* trailing whitespace: llhttp keeps it, we do not copy that */
        }
        p += 2;
        if (++count > max_count) {
            return 0;
        }
        total += name_size + value_size + 4;
        if (total > max_bytes) {
            return 0;
        }
        int known = find_name(name, name_size);
        PyObject *name_obj;
        if (known >= 0) {
            int flag = names[known].flag;
            if (flag == N_REFUSE) {
                return 0;
            }
            if (flag == N_LENGTH) {
                if (lengths++) {
                    return 0;
                }
                *length = parse_length(value, value_size);
                if (*length < 0) {
                    return 0;
                }
            }
            name_obj = names[known].obj;
            Py_INCREF(name_obj);
        } else {
            name_obj = PyBytes_FromStringAndSize(NULL, name_size);
            if (name_obj == NULL) {
                return -1;
            }
            char *to = PyBytes_AS_STRING(name_obj);
            for (Py_ssize_t k = 0; k < name_size; k++) {
                to[k] = (char)lower(name[k]);
            }
        }
        PyObject *value_obj = PyBytes_FromStringAndSize((const char *)value, value_size);
        if (value_obj == NULL) {
            Py_DECREF(name_obj);
            return -1;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name_obj);
            Py_DECREF(value_obj);
            return -1;
        }
        PyTuple_SET_ITEM(pair, 0, name_obj);
        PyTuple_SET_ITEM(pair, 1, value_obj);
        int failed = PyList_Append(out, pair);
        Py_DECREF(pair);
        if (failed) {
            return -1;
        }
    }
    *end = p + 2;
    return 1;
}

/* buf and pos: 1 with *start and *stop set (the buffer's end, where its NUL terminator is),
 * 0 for INCOMPLETE (nothing after pos), -1 for REFUSED (a negative pos), -2: a Python error */
static int head_start(PyObject *const *args, const unsigned char **start,
                      const unsigned char **stop, const unsigned char **base) {
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "buf must be bytes");
        return -2;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return -2;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (pos < 0 || pos >= size) {
        return pos < 0 ? REFUSED : INCOMPLETE; /* nothing after pos: no head yet */
    }
    *base = s;
    *start = s + pos;
    *stop = s + size;
    return 1;
}

/* What a head that did not scan is: INCOMPLETE without a CRLFCRLF after its start, else
 * REFUSED (the scan stops at the first line outside the subset, or at the buffer's end) */
static PyObject *not_scanned(const unsigned char *start, const unsigned char *stop) {
    int complete = memmem(start, (size_t)(stop - start), "\r\n\r\n", 4) != NULL;
    return PyLong_FromLong(complete ? REFUSED : INCOMPLETE);
}

static PyObject *scan_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "scan_request(buf, pos, max_url, max_header_bytes, max_header_count)");
        return NULL;
    }
    const unsigned char *start, *stop, *base, *end;
    int found = head_start(args, &start, &stop, &base);
    if (found <= 0) {
        return found == -2 ? NULL : PyLong_FromLong(found);
    }
    Py_ssize_t max_url = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[3]);
    Py_ssize_t max_count = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    /* the request line: METHOD SP /target SP HTTP/1.1 CRLF; no comparison reads past `stop` */
    const unsigned char *p = start;
    int method = -1;
    for (int i = 0; i < N_METHODS; i++) {
        Py_ssize_t n = (Py_ssize_t)strlen(method_names[i]);
        if (stop - p > n && memcmp(p, method_names[i], n) == 0 && p[n] == ' ') {
            method = i;
            p += n + 1;
            break;
        }
    }
    if (method < 0 || *p != '/') {
        return not_scanned(start, stop);
    }
    const unsigned char *target = p;
    while (is_target[*p]) {
        p++;
    }
    Py_ssize_t target_size = p - target;
    if (target_size > max_url || stop - p < 11 || memcmp(p, " HTTP/1.1\r\n", 11) != 0) {
        return not_scanned(start, stop);
    }
    p += 11;
    PyObject *headers = PyList_New(0);
    if (headers == NULL) {
        return NULL;
    }
    long long length;
    int ok = scan_fields(p, max_count, max_bytes, headers, &length, &end);
    if (ok <= 0) {
        Py_DECREF(headers);
        return ok < 0 ? NULL : not_scanned(start, stop);
    }
    PyObject *target_obj = PyBytes_FromStringAndSize((const char *)target, target_size);
    if (target_obj == NULL) {
        Py_DECREF(headers);
        return NULL;
    }
    PyObject *end_obj = PyLong_FromSsize_t(end - base);
    PyObject *length_obj = PyLong_FromLongLong(length);
    PyObject *result = PyTuple_New(5);
    if (end_obj == NULL || length_obj == NULL || result == NULL) {
        Py_XDECREF(end_obj);
        Py_XDECREF(length_obj);
        Py_XDECREF(result);
        Py_DECREF(target_obj);
        Py_DECREF(headers);
        return NULL;
    }
    Py_INCREF(method_objs[method]);
    PyTuple_SET_ITEM(result, 0, end_obj);
    PyTuple_SET_ITEM(result, 1, method_objs[method]);
    PyTuple_SET_ITEM(result, 2, target_obj);
    PyTuple_SET_ITEM(result, 3, headers);
    PyTuple_SET_ITEM(result, 4, length_obj);
    return result;
}

static PyObject *scan_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan_response(buf, pos, max_fields)");
        return NULL;
    }
    const unsigned char *start, *stop, *base, *end;
    int found = head_start(args, &start, &stop, &base);
    if (found <= 0) {
        return found == -2 ? NULL : PyLong_FromLong(found);
    }
    Py_ssize_t max_fields = PyLong_AsSsize_t(args[2]);
    if (max_fields == -1 && PyErr_Occurred()) {
        return NULL;
    }
    /* HTTP/1.1 SP 3DIGIT SP reason CRLF; no comparison reads past `stop` */
    const unsigned char *p = start;
    if (stop - p < 15 || memcmp(p, "HTTP/1.1 ", 9) != 0) {
        return not_scanned(start, stop);
    }
    p += 9;
    for (int i = 0; i < 3; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return not_scanned(start, stop);
        }
    }
    int status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    if (status < 200 || status > 599 || status == 204 || status == 304 || p[3] != ' ') {
        return not_scanned(start, stop);
    }
    p += 4;
    while (is_vchar[*p]) {
        p++;
    }
    if (p[0] != '\r' || p[1] != '\n') {
        return not_scanned(start, stop);
    }
    p += 2;
    PyObject *headers = PyList_New(0);
    if (headers == NULL) {
        return NULL;
    }
    long long length;
    int ok = scan_fields(p, max_fields, PY_SSIZE_T_MAX, headers, &length, &end);
    if (ok <= 0 || length < 0) {
        Py_DECREF(headers);
        return ok < 0 ? NULL : not_scanned(start, stop);
    }
    PyObject *end_obj = PyLong_FromSsize_t(end - base);
    PyObject *status_obj = PyLong_FromLong(status);
    PyObject *length_obj = PyLong_FromLongLong(length);
    PyObject *result = PyTuple_New(4);
    if (end_obj == NULL || status_obj == NULL || length_obj == NULL || result == NULL) {
        Py_XDECREF(end_obj);
        Py_XDECREF(status_obj);
        Py_XDECREF(length_obj);
        Py_XDECREF(result);
        Py_DECREF(headers);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, end_obj);
    PyTuple_SET_ITEM(result, 1, status_obj);
    PyTuple_SET_ITEM(result, 2, headers);
    PyTuple_SET_ITEM(result, 3, length_obj);
    return result;
}

/* join_fields(first, fields, last): `first`, then `name: value\r\n` for each (name, value) of
 * the list `fields`, then `last`, as one bytes object (one allocation, no list of pieces) */
static PyObject *join_fields(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyList_Check(args[1]) ||
        !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "join_fields(first: bytes, fields: list, last: bytes)");
        return NULL;
    }
    PyObject *fields = args[1];
    Py_ssize_t count = PyList_GET_SIZE(fields);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]) + PyBytes_GET_SIZE(args[2]);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PyList_GET_ITEM(fields, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "fields must be (bytes, bytes) pairs");
            return NULL;
        }
        size += PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0)) +
                PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1)) + 4;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) {
        return NULL;
    }
    char *to = PyBytes_AS_STRING(out);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    memcpy(to, PyBytes_AS_STRING(args[0]), n);
    to += n;
    /* the allocation may run a collection, and a finalizer may change the list: checked */
    const char *limit = PyBytes_AS_STRING(out) + size - PyBytes_GET_SIZE(args[2]);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = i < PyList_GET_SIZE(fields) ? PyList_GET_ITEM(fields, i) : NULL;
        if (pair == NULL || !PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 1)) ||
            PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0)) +
                    PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1)) + 4 > limit - to) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_RuntimeError, "fields changed while joined");
            return NULL;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        n = PyBytes_GET_SIZE(name);
        memcpy(to, PyBytes_AS_STRING(name), n);
        to += n;
        *to++ = ':';
        *to++ = ' ';
        n = PyBytes_GET_SIZE(value);
        memcpy(to, PyBytes_AS_STRING(value), n);
        to += n;
        *to++ = '\r';
        *to++ = '\n';
    }
    if (to != limit) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "fields changed while joined");
        return NULL;
    }
    n = PyBytes_GET_SIZE(args[2]);
    memcpy(to, PyBytes_AS_STRING(args[2]), n);
    return out;
}

/* normal_path(path: str) -> bool: whether a request path is already in its normal form, as
 * gateway/normalize.py's _FAST pattern says (its twin): "/", or segments "/" + 1+ characters of
 * A-Za-z0-9-._~!$&'()*+,;=:@ none of which is `.` or `..` (alone, or before `;`), then an
 * optional final "/". Anything else goes through the full normalisation. */
static unsigned char is_path_char[256];

static PyObject *normal_path(PyObject *module, PyObject *arg) {
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "normal_path(path: str)");
        return NULL;
    }
    if (PyUnicode_KIND(arg) != PyUnicode_1BYTE_KIND) {
        Py_RETURN_FALSE; /* a character above U+00FF: never normal */
    }
    const unsigned char *s = PyUnicode_1BYTE_DATA(arg);
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    if (n == 0 || s[0] != '/') {
        Py_RETURN_FALSE;
    }
    if (n == 1) {
        Py_RETURN_TRUE;
    }
    Py_ssize_t i = 0;
    while (i < n) {
        /* s[i] == '/' */
        Py_ssize_t start = ++i;
        while (i < n && is_path_char[s[i]]) {
            i++;
        }
        Py_ssize_t size = i - start;
        if (size == 0) {
            /* an empty segment: only as the final "/" after at least one segment */
            if (i == n && start > 1) {
                Py_RETURN_TRUE;
            }
            Py_RETURN_FALSE;
        }
        /* `.` or `..` followed by `/`, `;` or the end is a dot segment */
        Py_ssize_t dots = (s[start] == '.') ? ((start + 1 < n && s[start + 1] == '.') ? 2 : 1) : 0;
        if (dots) {
            Py_ssize_t after = start + dots;
            if (after == n || s[after] == '/' || s[after] == ';') {
                Py_RETURN_FALSE;
            }
        }
        if (i < n && s[i] != '/') {
            Py_RETURN_FALSE; /* a character outside the set */
        }
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"normal_path", (PyCFunction)normal_path, METH_O,
     "normal_path(path): whether the path is already normal (gateway/normalize.py's fast case)"},
    {"join_fields", (PyCFunction)(void (*)(void))join_fields, METH_FASTCALL,
     "join_fields(first, fields, last): first + b'name: value\\r\\n' per field + last"},
    {"scan_request", (PyCFunction)(void (*)(void))scan_request, METH_FASTCALL,
     "scan_request(buf, pos, max_url, max_header_bytes, max_header_count): "
     "(end, method, target, headers, content_length), 0 (incomplete) or -1 (refused)"},
    {"scan_response", (PyCFunction)(void (*)(void))scan_response, METH_FASTCALL,
     "scan_response(buf, pos, max_fields): (end, status, headers, content_length), "
     "0 (incomplete) or -1 (refused)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_scan",
    "The head scanner: a fast path in front of llhttp (see gateway/http/scan.py, its twin).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__scan(void) {
    const char *tchars = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        is_tchar[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                      (c >= 'A' && c <= 'Z') || (c && strchr(tchars, c) != NULL);
        is_vchar[c] = c == '\t' || (c >= 0x20 && c != 0x7f);
        is_target[c] = c >= 0x21 && c <= 0x7e;
        is_path_char[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                          (c >= 'A' && c <= 'Z') || (c && strchr("-._~!$&'()*+,;=:@", c) != NULL);
    }
    for (int size = 0; size <= MAX_NAME; size++) {
        candidates[size][0] = -1;
    }
    for (int i = 0; i < N_NAMES; i++) {
        names[i].size = (Py_ssize_t)strlen(names[i].name);
        if (names[i].size > MAX_NAME) {
            PyErr_SetString(PyExc_RuntimeError, "_scan: a common name is too long");
            return NULL;
        }
        int *slot = candidates[names[i].size];
        int k = 0;
        while (slot[k] >= 0) {
            k++;
        }
        if (k >= MAX_SAME_SIZE) {
            PyErr_SetString(PyExc_RuntimeError, "_scan: the common-name table does not fit");
            return NULL;
        }
        slot[k] = i;
        slot[k + 1] = -1;
        names[i].obj = PyBytes_FromStringAndSize(names[i].name, names[i].size);
        if (names[i].obj == NULL) {
            return NULL;
        }
    }
    for (int i = 0; i < N_METHODS; i++) {
        method_objs[i] = PyUnicode_InternFromString(method_names[i]);
        if (method_objs[i] == NULL) {
            return NULL;
        }
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "INCOMPLETE", INCOMPLETE) < 0 ||
        PyModule_AddIntConstant(m, "REFUSED", REFUSED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
