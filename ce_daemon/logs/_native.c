/* A CEF or LEEF line, written in C: the hot loop of every CEF and LEEF route.
 *
 * What it does is what the Python writers do (ce_daemon/logs/cef.py, leef.py) for one record, and the
 * tests hold it to their bytes (tests/test_generated_writers.py, every subtype of the simulator and
 * hypothesis over every control character, escape, surrogate and value type):
 *
 *   the head: each part a constant (already escaped), a field read from the record as a String
 *       rule's header field is (its fallback when the record has no text, cut to a limit), or a
 *       reader(record) -> str | None; a field's or a reader's text is escaped as a header field
 *       (None and "" write nothing);
 *   then for each step of a field plan (one output key):
 *       read the value: record.get(field), or getter(record) for a path or a format's own reader;
 *       turn it into text: converter(value), else a str as it is, a bool as true/false, an int as
 *       str(), a float as repr(), anything else through render_text (containers as compact JSON);
 *       no value or no text: the step's default, already escaped, or nothing at all;
 *       write "key=" + escaped text, then the step's follower ("cs1Label=..."), joined by the format's
 *       separator (a space for CEF, the delimiter for LEEF).
 *
 * Escaping, per code point while encoding UTF-8 (a lone surrogate becomes '?', as
 * str.encode("utf-8", "replace") writes it):
 *   CEF:    \ -> \\   = -> \=   LF -> \n   CR -> \r   other C0 and DEL -> Unicode Control Picture;
 *   LEEF:   the delimiter -> a space (unless it is a control character itself); C0 and DEL -> picture;
 *   header: \ -> \\   | -> \|   C0 (LF and CR included) and DEL -> picture (CEF and LEEF alike).
 *
 * Every Python call (getters, converters, render_text, the head's readers) keeps its own semantics,
 * exceptions included. Nothing here is reachable from the mapping file but keys and texts, which are
 * data, never code.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* Raised whenever this file changes what it takes: native.py refuses a build whose ABI is not its own. */
#define NATIVE_ABI 5

/* PLAIN: encoded, not escaped; HEADER: a header field's escapes. */
enum { MODE_PLAIN = -1, MODE_CEF = 0, MODE_LEEF = 1, MODE_HEADER = 2 };

/* Converters whose effect on an exact int is known: str(int), and epoch_ms_text (seconds below
 * 1e11 are multiplied by 1000). Any other value still goes through the converter itself. */
enum { SHORTCUT_NONE = 0, SHORTCUT_INT_TEXT = 1, SHORTCUT_EPOCH_MS = 2 };
#define SECONDS_LIMIT 100000000000LL

typedef struct {
    PyObject *key;       /* bytes: "key=" */
    PyObject *field;     /* str: the top-level key read when getter is NULL */
    PyObject *getter;    /* callable(record) or NULL */
    PyObject *converter; /* callable(value) -> str | None, or NULL */
    PyObject *fallback;  /* bytes: the default's escaped text, or NULL when the step has none */
    PyObject *follower;  /* bytes: "key=text" written after this step whenever it is written, or NULL */
    int constant;        /* nothing to read: the default alone */
    int shortcut;        /* the converter's effect on an exact int, done here (SHORTCUT_...) */
} Step;

/* How values are made safe: the format's rules, and the ASCII characters they rewrite. */
typedef struct {
    int mode;
    Py_UCS4 delimiter;          /* LEEF: the delimiter, as a code point */
    unsigned char special[128]; /* the ASCII characters `escaped` rewrites */
} Escaping;

/* Text already escaped (the head's constants): encoded as UTF-8, nothing rewritten. */
static const Escaping PLAIN = {MODE_PLAIN, 0, {0}};

/* One part of the head. */
typedef struct {
    PyObject *constant;  /* str, already escaped; or NULL */
    PyObject *reader;    /* callable(record) -> str | None; or NULL */
    PyObject *field;     /* str: read from the record when constant and reader are NULL */
    PyObject *fallback;  /* str written when the field has no text (not escaped yet), or NULL */
    Py_ssize_t limit;    /* the field's text is cut to this many characters (-1: not cut) */
} HeadPart;

typedef struct {
    PyObject_HEAD
    HeadPart *head;
    Py_ssize_t head_count;
    Step *steps;
    Py_ssize_t count;
    Escaping escaping;
    Escaping header;     /* the escaping of the head's read fields */
    PyObject *joint;     /* bytes between two fields */
    PyObject *render;    /* render_text */
    PyObject *fields;    /* dict: a field read with a dict lookup -> its readers (see `fields_of`) */
    unsigned long calls; /* records written, for `adopt_keys` */
} Writer;

/* Every this many records, the writer takes the record's own key objects for its lookups. */
#define ADOPT_EVERY 1024

/* -- a growable byte buffer, on the stack until a line outgrows it ------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t size;
    Py_ssize_t capacity;
    char local[8192];
} Buffer;

static void buffer_init(Buffer *b)
{
    b->data = b->local;
    b->size = 0;
    b->capacity = (Py_ssize_t)sizeof(b->local);
}

static void buffer_free(Buffer *b)
{
    if (b->data != b->local) {
        PyMem_Free(b->data);
    }
}

static int buffer_reserve(Buffer *b, Py_ssize_t more)
{
    if (b->size + more <= b->capacity) {
        return 0;
    }
    if (more > PY_SSIZE_T_MAX / 2 - b->size) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t capacity = b->capacity * 2;
    while (capacity < b->size + more) {
        capacity *= 2;
    }
    char *grown;
    if (b->data == b->local) {
        grown = PyMem_Malloc((size_t)capacity);
        if (grown != NULL) {
            memcpy(grown, b->local, (size_t)b->size);
        }
    } else {
        grown = PyMem_Realloc(b->data, (size_t)capacity);
    }
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = grown;
    b->capacity = capacity;
    return 0;
}

static int buffer_put(Buffer *b, const char *bytes, Py_ssize_t length)
{
    if (buffer_reserve(b, length) < 0) {
        return -1;
    }
    memcpy(b->data + b->size, bytes, (size_t)length);
    b->size += length;
    return 0;
}

static int buffer_put_bytes(Buffer *b, PyObject *bytes)
{
    return buffer_put(b, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
}

/* -- text ---------------------------------------------------------------------------------------- */

static int is_control(Py_UCS4 c)
{
    return c < 0x20 || c == 0x7F;
}

/* The UTF-8 of one code point (a surrogate as '?'); `out` has room for 4 bytes. */
static Py_ssize_t utf8(Py_UCS4 c, char *out)
{
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c >= 0xD800 && c <= 0xDFFF) {
        out[0] = '?';
        return 1;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18));
    out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* The escaped form of `c` in `mode` (at most 4 bytes), or 0 when `c` is written as it is. */
static Py_ssize_t escaped(const Escaping *e, Py_UCS4 c, char *out)
{
    if (e->mode == MODE_PLAIN) {
        return 0;
    }
    if (e->mode == MODE_HEADER) {
        switch (c) {
        case '\\': memcpy(out, "\\\\", 2); return 2;
        case '|': memcpy(out, "\\|", 2); return 2;
        default: break;
        }
    } else if (e->mode == MODE_CEF) {
        switch (c) {
        case '\\': memcpy(out, "\\\\", 2); return 2;
        case '=': memcpy(out, "\\=", 2); return 2;
        case '\n': memcpy(out, "\\n", 2); return 2;
        case '\r': memcpy(out, "\\r", 2); return 2;
        default: break;
        }
    } else if (c == e->delimiter && !is_control(c)) {
        out[0] = ' ';
        return 1;
    }
    if (is_control(c)) {
        return utf8(c == 0x7F ? 0x2421 : 0x2400 + c, out);
    }
    return 0;
}

/* Append `text` (a str), escaped as `e` says, as UTF-8. */
static int put_text(const Escaping *e, Buffer *b, PyObject *text)
{
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0) { /* a string made by a deprecated API; never one from JSON */
        return -1;
    }
#endif
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    /* An escape or a picture is at most 3 bytes for 1 ASCII character, a code point at most 4. */
    if (length > PY_SSIZE_T_MAX / 4 || buffer_reserve(b, length * 4) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return -1;
    }
    char *out = b->data + b->size;
    if (PyUnicode_IS_ASCII(text)) {
        /* The common case: copy runs of plain characters, stop only at what the table marks. */
        const unsigned char *chars = PyUnicode_1BYTE_DATA(text);
        const unsigned char *special = e->special;
        Py_ssize_t i = 0;
        while (i < length) {
            Py_ssize_t start = i;
            while (i < length && !special[chars[i]]) {
                i++;
            }
            memcpy(out, chars + start, (size_t)(i - start));
            out += i - start;
            if (i < length) {
                out += escaped(e, chars[i], out);
                i++;
            }
        }
    } else {
        int kind = PyUnicode_KIND(text);
        const void *data = PyUnicode_DATA(text);
        for (Py_ssize_t i = 0; i < length; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            Py_ssize_t n = escaped(e, c, out);
            out += n > 0 ? n : utf8(c, out);
        }
    }
    b->size = out - b->data;
    return 0;
}

/* -- one record ---------------------------------------------------------------------------------- */

/* The value's text as a new reference, Py_None (new) when it has none; NULL on an error. */
static PyObject *text_of(const Writer *w, const Step *step, PyObject *value)
{
    PyObject *text;
    if (step->converter != NULL) {
        text = PyObject_CallOneArg(step->converter, value);
        if (text != NULL && text != Py_None && !PyUnicode_Check(text)) {
            PyErr_Format(PyExc_TypeError, "a converter gave %.100s, not text", Py_TYPE(text)->tp_name);
            Py_DECREF(text);
            return NULL;
        }
        return text; /* "" is a text here: the key is written with nothing after it */
    }
    if (PyUnicode_CheckExact(value)) {
        Py_INCREF(value);
        return value;
    }
    if (PyBool_Check(value)) {
        return PyUnicode_FromString(value == Py_True ? "true" : "false");
    }
    if (PyLong_CheckExact(value)) {
        return PyObject_Str(value); /* beyond 64 bits (put_integer writes the others) */
    }
    if (PyFloat_CheckExact(value)) {
        return PyObject_Repr(value);
    }
    text = PyObject_CallOneArg(w->render, value);
    if (text != NULL && text != Py_None && !PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "render_text gave %.100s, not text", Py_TYPE(text)->tp_name);
        Py_DECREF(text);
        return NULL;
    }
    return text;
}

/* Append one field: the joint when something came before, then the key, then either `text` escaped
 * or `ready` (`size` bytes already safe to write). */
static int put_field(const Writer *w, Buffer *b, Py_ssize_t *written, PyObject *key, PyObject *text,
                     const char *ready, Py_ssize_t size)
{
    if (*written > 0 && buffer_put_bytes(b, w->joint) < 0) {
        return -1;
    }
    if (buffer_put_bytes(b, key) < 0) {
        return -1;
    }
    int status = text != NULL ? put_text(&w->escaping, b, text) : buffer_put(b, ready, size);
    if (status < 0) {
        return -1;
    }
    (*written)++;
    return 0;
}

static int put_follower(const Writer *w, Buffer *b, Py_ssize_t *written, const Step *step)
{
    if (step->follower == NULL) {
        return 0;
    }
    if (*written > 0 && buffer_put_bytes(b, w->joint) < 0) {
        return -1;
    }
    (*written)++;
    return buffer_put_bytes(b, step->follower);
}

static int put_default(const Writer *w, Buffer *b, Py_ssize_t *written, const Step *step)
{
    if (step->fallback == NULL) {
        return 0;
    }
    if (put_field(w, b, written, step->key, NULL, PyBytes_AS_STRING(step->fallback),
                  PyBytes_GET_SIZE(step->fallback)) < 0) {
        return -1;
    }
    return put_follower(w, b, written, step);
}

/* An exact int that fits 64 bits, written as its digits (what str() gives) when the step renders it
 * by type or through a shortcut converter: 1 when written, 0 when the value is not such an int. */
static int put_integer(const Writer *w, Buffer *b, Py_ssize_t *written, const Step *step, PyObject *value)
{
    if (!PyLong_CheckExact(value) || (step->converter != NULL && step->shortcut == SHORTCUT_NONE)) {
        return 0;
    }
    int overflow = 0;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow != 0 || (number == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0; /* beyond 64 bits: the general path */
    }
    if (step->shortcut == SHORTCUT_EPOCH_MS && number > -SECONDS_LIMIT && number < SECONDS_LIMIT) {
        number *= 1000; /* epoch seconds -> milliseconds, as epoch_ms_text does */
    }
    char digits[24];
    int size = snprintf(digits, sizeof(digits), "%lld", number);
    if (put_field(w, b, written, step->key, NULL, digits, size) < 0 ||
        put_follower(w, b, written, step) < 0) {
        return -1;
    }
    return 1;
}

/* record.get(field) as a new reference (Py_None when absent); NULL on an error. */
static PyObject *read_field(PyObject *record, PyObject *field)
{
    if (!PyDict_CheckExact(record)) {
        return PyObject_CallMethod(record, "get", "O", field);
    }
    PyObject *value = PyDict_GetItemWithError(record, field);
    if (value == NULL) {
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    return Py_NewRef(value);
}

static int put_step(const Writer *w, Buffer *b, Py_ssize_t *written, const Step *step, PyObject *record)
{
    if (step->constant) {
        return put_default(w, b, written, step);
    }
    PyObject *value = step->getter != NULL ? PyObject_CallOneArg(step->getter, record)
                                           : read_field(record, step->field);
    if (value == NULL) {
        return -1;
    }
    if (value == Py_None) {
        Py_DECREF(value);
        return put_default(w, b, written, step);
    }
    int done = put_integer(w, b, written, step, value);
    if (done != 0) {
        Py_DECREF(value);
        return done < 0 ? -1 : 0;
    }
    PyObject *text = text_of(w, step, value);
    Py_DECREF(value);
    if (text == NULL) {
        return -1;
    }
    /* Without a converter an empty text is no text (the default applies); a converter's "" is one. */
    if (text == Py_None || (step->converter == NULL && PyUnicode_GET_LENGTH(text) == 0)) {
        Py_DECREF(text);
        return put_default(w, b, written, step);
    }
    int status = put_field(w, b, written, step->key, text, NULL, 0);
    Py_DECREF(text);
    if (status < 0) {
        return -1;
    }
    return put_follower(w, b, written, step);
}

/* A plain step: no getter, no converter (what `text_of` does with a value read for a head field). */
static const Step BY_TYPE = {0};

/* A head field's text as a String rule's header field gives it (new reference; Py_None for none). */
static PyObject *head_field_text(const Writer *w, const HeadPart *part, PyObject *record)
{
    PyObject *value = read_field(record, part->field);
    if (value == NULL) {
        return NULL;
    }
    PyObject *text = value == Py_None ? Py_NewRef(Py_None) : text_of(w, &BY_TYPE, value);
    Py_DECREF(value);
    if (text == NULL) {
        return NULL;
    }
    if (text == Py_None || PyUnicode_GET_LENGTH(text) == 0) {
        Py_DECREF(text);
        return Py_NewRef(part->fallback != NULL ? part->fallback : Py_None);
    }
    if (part->limit >= 0 && PyUnicode_GET_LENGTH(text) > part->limit) {
        Py_SETREF(text, PyUnicode_Substring(text, 0, part->limit));
    }
    return text;
}

/* One part of the head: a constant as it is, a field's or a reader's text escaped as a header field. */
static int put_head_part(const Writer *w, Buffer *b, const HeadPart *part, PyObject *record)
{
    if (part->constant != NULL) {
        return put_text(&PLAIN, b, part->constant);
    }
    PyObject *text = part->reader != NULL ? PyObject_CallOneArg(part->reader, record)
                                          : head_field_text(w, part, record);
    if (text == NULL) {
        return -1;
    }
    int status = 0;
    if (PyUnicode_Check(text)) {
        status = put_text(&w->header, b, text);
    } else if (text != Py_None) {
        PyErr_Format(PyExc_TypeError, "a header field gave %.100s, not text", Py_TYPE(text)->tp_name);
        status = -1;
    }
    Py_DECREF(text);
    return status;
}

/* Take the record's key objects as the steps' lookup keys.
 *
 * orjson makes one key object per distinct key and gives it to every record it parses, but not ours:
 * a lookup with our own string then finds the entry by hash and compares the characters (memcmp),
 * about half the cost of a field. With the record's own object the lookup stops at the first pointer
 * comparison. The objects are equal strings, so what is read never changes, only how fast; done
 * again every ADOPT_EVERY records, in case the parser's key cache moved on. */
static void adopt_keys(Writer *w, PyObject *record)
{
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (PyDict_Next(record, &position, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) {
            continue;
        }
        PyObject *indexes = PyDict_GetItemWithError(w->fields, key);
        if (indexes == NULL) {
            PyErr_Clear(); /* not a field of ours (an error here is only a missed speed-up) */
            continue;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(indexes); i++) {
            Py_ssize_t index = PyLong_AsSsize_t(PyTuple_GET_ITEM(indexes, i));
            PyObject **field = index >= 0 ? &w->steps[index].field : &w->head[-index - 1].field;
            if (*field != key) {
                Py_SETREF(*field, Py_NewRef(key));
            }
        }
    }
}

/* The steps and head parts read with a dict lookup, by field: {field: (index, ...)}, a step by its
 * index, head part i as -(i + 1). */
static PyObject *fields_of(const Writer *w)
{
    PyObject *fields = PyDict_New();
    if (fields == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = -w->head_count; i < w->count; i++) {
        PyObject *field;
        if (i < 0) {
            field = w->head[-i - 1].field;
        } else {
            const Step *step = &w->steps[i];
            field = step->getter != NULL || step->constant ? NULL : step->field;
        }
        if (field == NULL || !PyUnicode_CheckExact(field)) {
            continue;
        }
        PyObject *known = PyDict_GetItemWithError(fields, field);
        PyObject *index = PyLong_FromSsize_t(i);
        PyObject *indexes = NULL;
        if (index != NULL && !PyErr_Occurred()) {
            PyObject *one = PyTuple_Pack(1, index);
            indexes = one == NULL ? NULL : (known == NULL ? Py_NewRef(one) : PySequence_Concat(known, one));
            Py_XDECREF(one);
        }
        Py_XDECREF(index);
        if (indexes == NULL || PyDict_SetItem(fields, field, indexes) < 0) {
            Py_XDECREF(indexes);
            Py_DECREF(fields);
            return NULL;
        }
        Py_DECREF(indexes);
    }
    return fields;
}

/* Writer(record) -> bytes: the head, then the record's fields. */
static PyObject *writer_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    Writer *w = (Writer *)self;
    PyObject *record;
    static char *names[] = {"record", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", names, &record)) {
        return NULL;
    }
    if (w->joint == NULL) {
        PyErr_SetString(PyExc_ValueError, "this writer was cleared by the garbage collector");
        return NULL;
    }
    if (w->calls++ % ADOPT_EVERY == 0 && PyDict_CheckExact(record)) {
        adopt_keys(w, record);
    }
    Buffer b;
    buffer_init(&b);
    Py_ssize_t written = 0;
    for (Py_ssize_t i = 0; i < w->head_count; i++) {
        if (put_head_part(w, &b, &w->head[i], record) < 0) {
            goto fail;
        }
    }
    for (Py_ssize_t i = 0; i < w->count; i++) {
        if (put_step(w, &b, &written, &w->steps[i], record) < 0) {
            goto fail;
        }
    }
    PyObject *result = PyBytes_FromStringAndSize(b.data, b.size);
    buffer_free(&b);
    return result;
fail:
    buffer_free(&b);
    return NULL;
}

/* -- construction -------------------------------------------------------------------------------- */

static PyObject *or_null(PyObject *value)
{
    return value == Py_None ? NULL : Py_NewRef(value);
}

/* Release the steps and the head parts (a writer being freed, or cleared by the garbage collector). */
static void clear_parts(Writer *w)
{
    for (Py_ssize_t i = 0; i < w->count; i++) {
        Step *s = &w->steps[i];
        Py_XDECREF(s->key);
        Py_XDECREF(s->field);
        Py_XDECREF(s->getter);
        Py_XDECREF(s->converter);
        Py_XDECREF(s->fallback);
        Py_XDECREF(s->follower);
    }
    PyMem_Free(w->steps);
    w->steps = NULL;
    w->count = 0;
    for (Py_ssize_t i = 0; i < w->head_count; i++) {
        HeadPart *part = &w->head[i];
        Py_XDECREF(part->constant);
        Py_XDECREF(part->reader);
        Py_XDECREF(part->field);
        Py_XDECREF(part->fallback);
    }
    PyMem_Free(w->head);
    w->head = NULL;
    w->head_count = 0;
}

/* One head part: a str (a constant, escaped), a callable (a reader), or (field, fallback, limit). */
static int parse_head_part(PyObject *item, HeadPart *part)
{
    part->limit = -1;
    if (PyUnicode_Check(item)) {
        part->constant = Py_NewRef(item);
        return 0;
    }
    if (PyCallable_Check(item)) {
        part->reader = Py_NewRef(item);
        return 0;
    }
    PyObject *field, *fallback;
    Py_ssize_t limit;
    if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "UOn", &field, &fallback, &limit) ||
        (fallback != Py_None && !PyUnicode_Check(fallback))) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "a head part is a str, a callable or (str, str|None, int)");
        return -1;
    }
    part->field = Py_NewRef(field);
    part->fallback = or_null(fallback);
    part->limit = limit;
    return 0;
}

/* One step from its tuple: (key, field, getter, converter, fallback, follower, constant, shortcut). */
static int parse_step(PyObject *item, Step *step)
{
    PyObject *key, *field, *getter, *converter, *fallback, *follower;
    int constant, shortcut;
    if (!PyArg_ParseTuple(item, "SUOOOOpi", &key, &field, &getter, &converter, &fallback, &follower,
                          &constant, &shortcut)) {
        return -1;
    }
    if (shortcut < SHORTCUT_NONE || shortcut > SHORTCUT_EPOCH_MS || (shortcut != SHORTCUT_NONE && converter == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "a shortcut is 0, 1 or 2, and only for a step with a converter");
        return -1;
    }
    if ((getter != Py_None && !PyCallable_Check(getter)) ||
        (converter != Py_None && !PyCallable_Check(converter)) ||
        (fallback != Py_None && !PyBytes_Check(fallback)) ||
        (follower != Py_None && !PyBytes_Check(follower))) {
        PyErr_SetString(PyExc_TypeError, "a step is (bytes, str, callable|None, callable|None, "
                                         "bytes|None, bytes|None, bool)");
        return -1;
    }
    step->key = Py_NewRef(key);
    step->field = Py_NewRef(field);
    step->getter = or_null(getter);
    step->converter = or_null(converter);
    step->fallback = or_null(fallback);
    step->follower = or_null(follower);
    step->constant = constant;
    step->shortcut = shortcut;
    return 0;
}

/* Writer(head, steps, mode, delimiter, joint, render_text): mode 0 is CEF, 1 is LEEF. */
static PyObject *writer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *head, *steps, *delimiter, *joint, *render;
    int mode;
    static char *names[] = {"head", "steps", "mode", "delimiter", "joint", "render_text", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!iUSO", names, &PyTuple_Type, &head, &PyTuple_Type,
                                     &steps, &mode, &delimiter, &joint, &render)) {
        return NULL;
    }
    if ((mode != MODE_CEF && mode != MODE_LEEF) || PyUnicode_GET_LENGTH(delimiter) != 1 ||
        !PyCallable_Check(render)) {
        PyErr_SetString(PyExc_ValueError, "mode is 0 or 1, the delimiter one character, render_text callable");
        return NULL;
    }
    Writer *w = (Writer *)type->tp_alloc(type, 0);
    if (w == NULL) {
        return NULL;
    }
    Py_ssize_t parts = PyTuple_GET_SIZE(head);
    w->head = PyMem_Calloc((size_t)(parts > 0 ? parts : 1), sizeof(HeadPart));
    Py_ssize_t count = PyTuple_GET_SIZE(steps);
    w->steps = PyMem_Calloc((size_t)(count > 0 ? count : 1), sizeof(Step));
    if (w->head == NULL || w->steps == NULL) {
        Py_DECREF(w);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < parts; i++) {
        if (parse_head_part(PyTuple_GET_ITEM(head, i), &w->head[i]) < 0) {
            Py_DECREF(w);
            return NULL;
        }
        w->head_count = i + 1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (parse_step(PyTuple_GET_ITEM(steps, i), &w->steps[i]) < 0) {
            Py_DECREF(w);
            return NULL;
        }
        w->count = i + 1;
    }
    w->escaping.mode = mode;
    w->escaping.delimiter = PyUnicode_READ_CHAR(delimiter, 0);
    w->joint = Py_NewRef(joint);
    w->render = Py_NewRef(render);
    w->fields = fields_of(w);
    if (w->fields == NULL) {
        Py_DECREF(w);
        return NULL;
    }
    w->header.mode = MODE_HEADER;
    char code[4];
    for (Py_UCS4 c = 0; c < 128; c++) {
        w->escaping.special[c] = escaped(&w->escaping, c, code) > 0;
        w->header.special[c] = escaped(&w->header, c, code) > 0;
    }
    return (PyObject *)w;
}

/* Getters and converters are the caller's objects: a writer takes part in garbage collection, so that a
 * converter holding on to what holds the writer is no leak. */
static int writer_traverse(PyObject *self, visitproc visit, void *arg)
{
    Writer *w = (Writer *)self;
    for (Py_ssize_t i = 0; i < w->count; i++) {
        Py_VISIT(w->steps[i].getter);
        Py_VISIT(w->steps[i].converter);
    }
    for (Py_ssize_t i = 0; i < w->head_count; i++) {
        Py_VISIT(w->head[i].reader);
    }
    Py_VISIT(w->render);
    return 0;
}

static int writer_clear(PyObject *self)
{
    Writer *w = (Writer *)self;
    clear_parts(w);
    Py_CLEAR(w->joint);
    Py_CLEAR(w->render);
    Py_CLEAR(w->fields);
    return 0;
}

static void writer_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    writer_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ce_daemon.logs._native.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Writer(head, steps, mode, delimiter, joint, render_text)(record) -> bytes",
    .tp_new = writer_new,
    .tp_dealloc = writer_dealloc,
    .tp_traverse = writer_traverse,
    .tp_clear = writer_clear,
    .tp_call = writer_call,
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ce_daemon.logs._native",
    .m_doc = "The CEF and LEEF line writer in C (see ce_daemon/logs/native.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&WriterType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "ABI", NATIVE_ABI) < 0 ||
        PyModule_AddObjectRef(module, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
