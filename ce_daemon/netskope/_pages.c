/* A data-export answer cut into its records' JSON texts, in C: ingestion's fast path
 * (ce_daemon/netskope/rawpages.py says what it must vouch for, and falls back to msgspec and simdjson
 * without this module).
 *
 * `split(body, depth_limit)` reads the whole answer once with the strict scanner (../_jsonscan.h): it
 * takes only text that orjson reads to the same values, so a record's text stored as it came is read
 * back by every consumer as the record the slow path (parse, repair, write) would have stored. It
 * answers None, and the page takes the slow path, when:
 *
 *   the scanner refuses any part of the answer (grammar, UTF-8, escapes, control characters, ints beyond
 *       64 bits, non-finite or very long floats), or there is anything after it but whitespace;
 *   the answer is not an object with a `result` array of objects, holds a field besides `ok`, `result`,
 *       `wait_time` and `timestamp_hwm`, gives one of them twice, or spells a name with an escape;
 *   a record nests deeper than `depth_limit` levels (the record itself is level 1), or spells one of its
 *       own field names with an escape (its `_id` or `timestamp` could hide behind one).
 *
 * Otherwise it answers (fields, spans, missing): the texts of the answer's other fields by name; per
 * record, six native-endian int64 in `spans`: where the record's text starts and ends in the body, then
 * where the text of its `_id` and of its `timestamp` start and end (-1 -1 for a field it lacks; the last
 * one given when a record gives one twice, as orjson's dict keeps it); and how many records lack either.
 *
 * `join(body, spans, first, stop)` is the JSON array of records first..stop-1, as the spool stores a
 * frame: "[" the records' texts joined by "," "]".
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../_jsonscan.h"

/* Raised whenever this file changes what it takes or answers: rawpages.py refuses a build of another. */
#define PAGES_ABI 1

enum { SPAN_START, SPAN_END, SPAN_ID_START, SPAN_ID_END, SPAN_STAMP_START, SPAN_STAMP_END, SPAN_WIDTH };

typedef struct {
    int64_t *items;
    Py_ssize_t count;    /* int64 written */
    Py_ssize_t capacity; /* int64 room */
} Spans;

static int spans_grow(Spans *s)
{
    Py_ssize_t capacity = s->capacity ? s->capacity * 2 : SPAN_WIDTH * 1024;
    if (capacity > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(int64_t)) {
        PyErr_NoMemory();
        return -1;
    }
    int64_t *items = PyMem_Realloc(s->items, (size_t)capacity * sizeof(int64_t));
    if (items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    s->items = items;
    s->capacity = capacity;
    return 0;
}

/* The name of a field, between its quotes: whether it is `word`. */
static int named(const unsigned char *name, Py_ssize_t length, const char *word)
{
    return (size_t)length == strlen(word) && memcmp(name, word, (size_t)length) == 0;
}

/* A member's name and its colon at p (see scan_member_name), refused when the name holds an escape. */
static const unsigned char *scan_name(const unsigned char *p, const unsigned char *end,
                                      const unsigned char **name, Py_ssize_t *length)
{
    int escapes;
    p = scan_member_name(p, end, name, length, &escapes);
    return p == NULL || escapes ? NULL : p;
}

/* One record at p, an object: the byte after it, NULL when refused. Its row of spans is `row`, offsets
 * from `body`; `depth` is what the scanner is given for the record's values (see MAX_DEPTH). */
static const unsigned char *scan_record(const unsigned char *body, const unsigned char *p,
                                        const unsigned char *end, int depth, int64_t *row)
{
    row[SPAN_START] = p - body;
    row[SPAN_ID_START] = row[SPAN_ID_END] = row[SPAN_STAMP_START] = row[SPAN_STAMP_END] = -1;
    if (p >= end || *p != '{') {
        return NULL;
    }
    p = skip_space(p + 1, end);
    if (p < end && *p == '}') {
        row[SPAN_END] = p + 1 - body;
        return p + 1;
    }
    for (int more = 1; more;) {
        const unsigned char *name;
        Py_ssize_t length;
        if ((p = scan_name(p, end, &name, &length)) == NULL) {
            return NULL;
        }
        const unsigned char *start = p;
        Value value;
        if ((p = scan_value(p, end, depth, &value)) == NULL) {
            return NULL;
        }
        if (named(name, length, "_id")) {
            row[SPAN_ID_START] = start - body;
            row[SPAN_ID_END] = p - body;
        } else if (named(name, length, "timestamp")) {
            row[SPAN_STAMP_START] = start - body;
            row[SPAN_STAMP_END] = p - body;
        }
        if ((p = next_item(p, end, '}', &more)) == NULL) {
            return NULL;
        }
    }
    row[SPAN_END] = p - body;
    return p;
}

/* The `result` array at p: its records' rows appended to `spans`; the byte after it, NULL when refused
 * (with no Python error set) or on an error (set). */
static const unsigned char *scan_result(const unsigned char *body, const unsigned char *p,
                                        const unsigned char *end, int depth, Spans *spans)
{
    if (p >= end || *p != '[') {
        return NULL;
    }
    p = skip_space(p + 1, end);
    if (p < end && *p == ']') {
        return p + 1;
    }
    for (;;) {
        if (spans->capacity - spans->count < SPAN_WIDTH && spans_grow(spans) < 0) {
            return NULL;
        }
        if ((p = scan_record(body, p, end, depth, spans->items + spans->count)) == NULL) {
            return NULL;
        }
        spans->count += SPAN_WIDTH;
        int more;
        if ((p = next_item(p, end, ']', &more)) == NULL || !more) {
            return p;
        }
    }
}

static const char *const OTHER_FIELDS[] = {"ok", "wait_time", "timestamp_hwm"};
#define OTHER_COUNT 3

/* The answer in `text`, its records' rows in `spans`, its other fields' texts in `fields`: 1 when taken,
 * 0 when refused, -1 on an error (set). */
static int scan_answer(const unsigned char *body, Py_ssize_t size, int depth, Spans *spans, PyObject *fields)
{
    const unsigned char *end = body + size;
    const unsigned char *p = skip_space(body, end);
    int seen_result = 0, seen[OTHER_COUNT] = {0};
    if (p >= end || *p != '{') {
        return 0;
    }
    p = skip_space(p + 1, end);
    if (p < end && *p == '}') {
        return 0; /* no result */
    }
    for (int more = 1; more;) {
        const unsigned char *name;
        Py_ssize_t length;
        if ((p = scan_name(p, end, &name, &length)) == NULL) {
            return 0;
        }
        if (named(name, length, "result")) {
            if (seen_result++) {
                return 0;
            }
            if ((p = scan_result(body, p, end, depth, spans)) == NULL) {
                return PyErr_Occurred() ? -1 : 0;
            }
        } else {
            int which = -1;
            for (int i = 0; i < OTHER_COUNT; i++) {
                if (named(name, length, OTHER_FIELDS[i])) {
                    which = i;
                }
            }
            if (which < 0 || seen[which]++) {
                return 0;
            }
            const unsigned char *start = p;
            Value value;
            if ((p = scan_value(p, end, 1, &value)) == NULL) {
                return 0;
            }
            PyObject *text = PyBytes_FromStringAndSize((const char *)start, p - start);
            if (text == NULL || PyDict_SetItemString(fields, OTHER_FIELDS[which], text) < 0) {
                Py_XDECREF(text);
                return -1;
            }
            Py_DECREF(text);
        }
        if ((p = next_item(p, end, '}', &more)) == NULL) {
            return 0;
        }
    }
    return seen_result && skip_space(p, end) == end;
}

static PyObject *pages_split(PyObject *module, PyObject *args)
{
    Py_buffer body;
    int depth_limit;
    if (!PyArg_ParseTuple(args, "y*i:split", &body, &depth_limit)) {
        return NULL;
    }
    PyObject *answer = NULL, *fields = NULL;
    Spans spans = {NULL, 0, 0};
    if (depth_limit < 1 || depth_limit >= MAX_DEPTH) {
        PyErr_Format(PyExc_ValueError, "depth_limit must be within 1..%d", MAX_DEPTH - 1);
        goto done;
    }
    if ((fields = PyDict_New()) == NULL) {
        goto done;
    }
    /* The record is level 1: its values start at level 2, and level depth_limit + 1 is refused. */
    int taken = scan_answer(body.buf, body.len, MAX_DEPTH - depth_limit + 1, &spans, fields);
    if (taken < 0) {
        goto done;
    }
    if (taken == 0) {
        answer = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t missing = 0;
    for (Py_ssize_t at = 0; at < spans.count; at += SPAN_WIDTH) {
        missing += spans.items[at + SPAN_ID_START] < 0 || spans.items[at + SPAN_STAMP_START] < 0;
    }
    PyObject *packed = PyBytes_FromStringAndSize((const char *)spans.items,
                                                 spans.count * (Py_ssize_t)sizeof(int64_t));
    if (packed != NULL) {
        answer = Py_BuildValue("(OOn)", fields, packed, missing);
        Py_DECREF(packed);
    }
done:
    PyMem_Free(spans.items);
    Py_XDECREF(fields);
    PyBuffer_Release(&body);
    return answer;
}

static PyObject *pages_join(PyObject *module, PyObject *args)
{
    Py_buffer body, spans;
    Py_ssize_t first, stop;
    if (!PyArg_ParseTuple(args, "y*y*nn:join", &body, &spans, &first, &stop)) {
        return NULL;
    }
    PyObject *joined = NULL;
    const int64_t *rows = spans.buf;
    Py_ssize_t count = spans.len / (Py_ssize_t)(SPAN_WIDTH * sizeof(int64_t));
    if (spans.len % (Py_ssize_t)(SPAN_WIDTH * sizeof(int64_t)) != 0 || first < 0 || stop < first ||
        stop > count) {
        PyErr_SetString(PyExc_ValueError, "join: spans or range out of bounds");
        goto done;
    }
    Py_ssize_t size = 2 + (stop > first ? stop - first - 1 : 0);
    for (Py_ssize_t i = first; i < stop; i++) {
        const int64_t *row = rows + i * SPAN_WIDTH;
        if (row[SPAN_START] < 0 || row[SPAN_END] < row[SPAN_START] || row[SPAN_END] > body.len) {
            PyErr_SetString(PyExc_ValueError, "join: a span lies outside the body");
            goto done;
        }
        size += (Py_ssize_t)(row[SPAN_END] - row[SPAN_START]);
    }
    joined = PyBytes_FromStringAndSize(NULL, size);
    if (joined == NULL) {
        goto done;
    }
    char *out = PyBytes_AS_STRING(joined);
    *out++ = '[';
    for (Py_ssize_t i = first; i < stop; i++) {
        const int64_t *row = rows + i * SPAN_WIDTH;
        if (i > first) {
            *out++ = ',';
        }
        size_t length = (size_t)(row[SPAN_END] - row[SPAN_START]);
        memcpy(out, (const char *)body.buf + row[SPAN_START], length);
        out += length;
    }
    *out = ']';
done:
    PyBuffer_Release(&body);
    PyBuffer_Release(&spans);
    return joined;
}

static PyMethodDef pages_methods[] = {
    {"split", pages_split, METH_VARARGS, "A data-export answer's records as spans of its text, or None."},
    {"join", pages_join, METH_VARARGS, "The JSON array of records first..stop-1 of a split answer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef pages_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ce_daemon.netskope._pages",
    .m_doc = "A data-export answer cut into its records' JSON texts (see ce_daemon/netskope/rawpages.py).",
    .m_size = -1,
    .m_methods = pages_methods,
};

PyMODINIT_FUNC PyInit__pages(void)
{
    init_string_class();
    PyObject *module = PyModule_Create(&pages_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "ABI", PAGES_ABI) < 0 ||
        PyModule_AddIntConstant(module, "SPAN_WIDTH", SPAN_WIDTH) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
