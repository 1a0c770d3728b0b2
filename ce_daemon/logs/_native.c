/* A CEF or LEEF line, written in C: the hot loop of every CEF and LEEF route (and JSON lines' reader).
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
 * A record comes as a dict (`Writer(record)`), or as its JSON text in a frame of the spool
 * (`write_frame`, "records as JSON text" below: the same lines, no dict built); a JSON route of the raw
 * record uses `write_frame` alone ("JSON lines" below).
 *
 * Every Python call (getters, converters, render_text, the head's readers) keeps its own semantics,
 * exceptions included. Nothing here is reachable from the mapping file but keys and texts, which are
 * data, never code.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "../_jsonscan.h"

/* Raised whenever this file changes what it takes: native.py refuses a build whose ABI is not its own. */
#define NATIVE_ABI 8

/* PLAIN: encoded, not escaped; HEADER: a header field's escapes; JSON: a JSON route's whole record
 * (`render_text` is then the record's writer, orjson.dumps or its fallback). */
enum { MODE_PLAIN = -1, MODE_CEF = 0, MODE_LEEF = 1, MODE_HEADER = 2, MODE_JSON = 3 };

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

/* A field this writer reads, by the UTF-8 of its name: one entry of an open-addressing table. */
typedef struct {
    const char *name; /* NULL: a free entry */
    Py_ssize_t length;
    Py_ssize_t slot;
} Entry;

/* A key seen in one object of the record being checked (`is_canonical`): 16 bytes, so that the table
 * stays in the first-level cache. */
typedef struct {
    uint32_t object; /* the object's number (0: a free entry) */
    uint32_t hash;
    uint32_t offset; /* where the key starts, from the record's first byte */
    uint32_t length;
} KeySeen;

#define KEY_TABLE 512

/* What a writer needs to read records as JSON text (`write_frame`): each field it reads has a slot,
 * filled per record with the value found in the text. */
typedef struct {
    Py_ssize_t slot_count;
    PyObject **names;        /* str per slot */
    Entry *table;            /* the slots by name */
    size_t mask;             /* table size - 1 (a power of two) */
    Py_ssize_t *step_slots;  /* per step: the slot it reads, -1 for a constant or a getter */
    Py_ssize_t *head_slots;  /* per head part: the slot of its field, -1 for a constant or a reader */
    Py_ssize_t *reads;       /* the slots handed to getters and readers (their declared fields) */
    Py_ssize_t read_count;
    Py_ssize_t id_slot;      /* "_id" */
    Py_ssize_t stamp_slot;   /* "timestamp" */
    Value *values;           /* per slot, the current record's */
    unsigned long *seen;     /* per slot, the record that last set it */
    unsigned long record;    /* records scanned (the current one's number) */
    unsigned char stop[256]; /* bytes a string's copy stops at: escapes, specials, non-ASCII */
    PyObject *loads;         /* parses a container's text (orjson.loads) */
    int busy;                /* a frame is being written */
    uint32_t objects;        /* objects numbered so far (`is_canonical`) */
    KeySeen keys[KEY_TABLE]; /* their keys (`is_canonical`), by hash */
} Texts;

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
    Texts *texts;        /* NULL when this writer cannot read records as JSON text */
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

/* A step's int `number`, written as str() writes it (epoch seconds as milliseconds under that shortcut). */
static int put_number(const Writer *w, Buffer *b, Py_ssize_t *written, const Step *step, long long number)
{
    if (step->shortcut == SHORTCUT_EPOCH_MS && number > -SECONDS_LIMIT && number < SECONDS_LIMIT) {
        number *= 1000; /* epoch seconds -> milliseconds, as epoch_ms_text does */
    }
    char digits[24];
    char *first = digits + sizeof(digits);
    unsigned long long magnitude = number < 0 ? 0ULL - (unsigned long long)number : (unsigned long long)number;
    do { /* what "%lld" writes, without printf's machinery */
        *--first = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude > 0);
    if (number < 0) {
        *--first = '-';
    }
    Py_ssize_t size = digits + sizeof(digits) - first;
    if (put_field(w, b, written, step->key, NULL, first, size) < 0) {
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
    return put_number(w, b, written, step, number) < 0 ? -1 : 1;
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

/* Write one step's `value` (read already; Py_None when it has none). */
static int put_value(const Writer *w, Buffer *b, Py_ssize_t *written, const Step *step, PyObject *value)
{
    if (value == Py_None) {
        return put_default(w, b, written, step);
    }
    int done = put_integer(w, b, written, step, value);
    if (done != 0) {
        return done < 0 ? -1 : 0;
    }
    PyObject *text = text_of(w, step, value);
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
    int status = put_value(w, b, written, step, value);
    Py_DECREF(value);
    return status;
}

/* A plain step: no getter, no converter (what `text_of` does with a value read for a head field). */
static const Step BY_TYPE = {0};

/* The text a String rule's header field gives for the `value` read (new reference; Py_None for none). */
static PyObject *head_field_text(const Writer *w, const HeadPart *part, PyObject *value)
{
    PyObject *text = value == Py_None ? Py_NewRef(Py_None) : text_of(w, &BY_TYPE, value);
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

/* A field's or a reader's `text` (consumed) escaped as a header field; NULL is an error raised. */
static int put_head_text(const Writer *w, Buffer *b, PyObject *text)
{
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

/* One part of the head: a constant as it is, a field's or a reader's text escaped as a header field. */
static int put_head_part(const Writer *w, Buffer *b, const HeadPart *part, PyObject *record)
{
    if (part->constant != NULL) {
        return put_text(&PLAIN, b, part->constant);
    }
    if (part->reader != NULL) {
        return put_head_text(w, b, PyObject_CallOneArg(part->reader, record));
    }
    PyObject *value = read_field(record, part->field);
    if (value == NULL) {
        return -1;
    }
    PyObject *text = head_field_text(w, part, value);
    Py_DECREF(value);
    return put_head_text(w, b, text);
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
    if (w->escaping.mode == MODE_JSON) {
        return PyObject_CallOneArg(w->render, record);
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

/* -- records as JSON text ------------------------------------------------------------------------ */

/* A frame of the spool is a JSON array of records. `write_frame` writes each record's line from that
 * text, without building its dict: a field's string is escaped straight from its JSON bytes, an int
 * written from its digits. Values that need Python (a converter's argument, a float, a container, the
 * fields a getter or a reader declared) are made as orjson makes them, and a getter or a reader gets
 * a dict of its declared fields alone.
 *
 * The scanner checks the whole frame as strictly as orjson: any text orjson would refuse or read in a
 * way of its own (an int beyond 64 bits, a lone surrogate, invalid UTF-8, a key with an escape, depth
 * beyond MAX_DEPTH) makes `write_frame` raise ValueError, and the caller parses that frame with orjson
 * instead; so does any error raised while writing (a converter's). */

/* A hash of a key's bytes, eight at a time (keys are short: one or two rounds). */
static size_t name_hash(const char *name, Py_ssize_t length)
{
    uint64_t hash = (uint64_t)length * 0x9E3779B97F4A7C15ULL;
    Py_ssize_t i = 0;
    for (; i + 8 <= length; i += 8) {
        uint64_t word;
        memcpy(&word, name + i, 8);
        hash = (hash ^ word) * 0xFF51AFD7ED558CCDULL;
        hash ^= hash >> 29;
    }
    if (i < length) {
        uint64_t word = 0;
        if (length >= 8) {
            memcpy(&word, name + length - 8, 8); /* the last eight bytes (a fixed-size load, no stall) */
        } else {
            for (Py_ssize_t j = 0; j < length; j++) {
                word |= (uint64_t)(unsigned char)name[j] << (8 * j);
            }
        }
        hash = (hash ^ word) * 0xFF51AFD7ED558CCDULL;
        hash ^= hash >> 29;
    }
    return (size_t)(hash ^ (hash >> 32));
}

/* The slot of the field named by `length` bytes at `name`, -1 when this writer does not read it. */
static Py_ssize_t slot_of(const Texts *t, const char *name, Py_ssize_t length)
{
    for (size_t i = name_hash(name, length) & t->mask;; i = (i + 1) & t->mask) {
        const Entry *entry = &t->table[i];
        if (entry->name == NULL) {
            return -1;
        }
        if (entry->length == length && memcmp(entry->name, name, (size_t)length) == 0) {
            return entry->slot;
        }
    }
}

/* The code point at *p of a string's JSON text (valid: it was scanned), *p moved past it. */
static Py_UCS4 next_char(const unsigned char **p, const unsigned char *end)
{
    const unsigned char *at = *p;
    if (*at == '\\') {
        Py_ssize_t size;
        long c = read_escape(at, end, &size);
        *p = at + size;
        return (Py_UCS4)c;
    }
    if (*at < 0x80) {
        *p = at + 1;
        return *at;
    }
    int length = *at >= 0xF0 ? 4 : *at >= 0xE0 ? 3 : 2;
    Py_UCS4 c = *at & (0xFF >> (length + 1));
    for (int i = 1; i < length; i++) {
        c = (c << 6) | (at[i] & 0x3F);
    }
    *p = at + length;
    return c;
}

/* A value of the text as orjson makes it (new reference; NULL on an error). */
static PyObject *value_object(const Texts *t, const Value *v)
{
    switch (v->kind) {
    case JSON_STRING:
        return PyUnicode_DecodeUTF8((const char *)v->start, v->length, NULL);
    case JSON_ESCAPED: {
        Py_UCS4 *chars = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)(v->length > 0 ? v->length : 1));
        if (chars == NULL) {
            return PyErr_NoMemory();
        }
        Py_ssize_t count = 0;
        const unsigned char *p = v->start, *end = v->start + v->length;
        while (p < end) {
            chars[count++] = next_char(&p, end);
        }
        PyObject *text = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, chars, count);
        PyMem_Free(chars);
        return text;
    }
    case JSON_INT: return PyLong_FromLongLong(v->number);
    case JSON_FLOAT: return PyFloat_FromDouble(v->real);
    case JSON_TRUE: return Py_NewRef(Py_True);
    case JSON_FALSE: return Py_NewRef(Py_False);
    case JSON_NULL: return Py_NewRef(Py_None);
    default: {
        PyObject *text = PyBytes_FromStringAndSize((const char *)v->start, v->length);
        if (text == NULL) {
            return NULL;
        }
        PyObject *value = PyObject_CallOneArg(t->loads, text);
        Py_DECREF(text);
        return value;
    }
    }
}

/* The current record's value in `slot` (new reference; Py_None when the record has none). */
static PyObject *slot_object(const Texts *t, Py_ssize_t slot)
{
    if (slot < 0 || t->seen[slot] != t->record) {
        return Py_NewRef(Py_None);
    }
    return value_object(t, &t->values[slot]);
}

/* The dict a getter or a reader is given: the fields they declared, those the record has. */
static PyObject *declared_fields(const Texts *t)
{
    PyObject *record = PyDict_New();
    for (Py_ssize_t i = 0; record != NULL && i < t->read_count; i++) {
        Py_ssize_t slot = t->reads[i];
        if (t->seen[slot] != t->record) {
            continue;
        }
        PyObject *value = value_object(t, &t->values[slot]);
        if (value == NULL || PyDict_SetItem(record, t->names[slot], value) < 0) {
            Py_XDECREF(value);
            Py_CLEAR(record);
        }
        Py_XDECREF(value);
    }
    return record;
}

/* Append a string's JSON text escaped as `e` says: runs of plain bytes copied, UTF-8 sequences as
 * they are (the text is valid UTF-8 and no non-ASCII character is escaped here), each escape decoded
 * and its character escaped as `put_text` would. */
static int put_json_text(const Writer *w, const Escaping *e, Buffer *b, const Value *v)
{
    /* Each byte gives at most 3 (a picture for a control character), an escape never more than its own. */
    if (v->length > PY_SSIZE_T_MAX / 3 || buffer_reserve(b, v->length * 3) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return -1;
    }
    const unsigned char *stop = w->texts->stop;
    const unsigned char *p = v->start, *end = v->start + v->length;
    char *out = b->data + b->size;
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && !stop[*p]) {
            p++;
        }
        memcpy(out, run, (size_t)(p - run));
        out += p - run;
        if (p >= end) {
            break;
        }
        if (*p >= 0x80) {
            int length = *p >= 0xF0 ? 4 : *p >= 0xE0 ? 3 : 2;
            memcpy(out, p, (size_t)length);
            out += length;
            p += length;
            continue;
        }
        Py_UCS4 c = next_char(&p, end);
        Py_ssize_t n = escaped(e, c, out);
        out += n > 0 ? n : utf8(c, out);
    }
    b->size = out - b->data;
    return 0;
}

/* Write one step from the current record's value `v` (NULL: the record has none). */
static int put_json_value(const Writer *w, Buffer *b, Py_ssize_t *written, const Step *step, const Value *v)
{
    if (v == NULL || v->kind == JSON_NULL) {
        return put_default(w, b, written, step);
    }
    if (step->converter == NULL) {
        if (v->kind == JSON_STRING || v->kind == JSON_ESCAPED) {
            if (v->length == 0) {
                return put_default(w, b, written, step); /* "" is no text */
            }
            if ((*written > 0 && buffer_put_bytes(b, w->joint) < 0) || buffer_put_bytes(b, step->key) < 0 ||
                put_json_text(w, &w->escaping, b, v) < 0) {
                return -1;
            }
            (*written)++;
            return put_follower(w, b, written, step);
        }
        if (v->kind == JSON_TRUE || v->kind == JSON_FALSE) {
            const char *word = v->kind == JSON_TRUE ? "true" : "false";
            if (put_field(w, b, written, step->key, NULL, word, (Py_ssize_t)strlen(word)) < 0) {
                return -1;
            }
            return put_follower(w, b, written, step);
        }
    }
    if (v->kind == JSON_INT && (step->converter == NULL || step->shortcut != SHORTCUT_NONE)) {
        return put_number(w, b, written, step, v->number);
    }
    PyObject *value = value_object(w->texts, v);
    if (value == NULL) {
        return -1;
    }
    int status = put_value(w, b, written, step, value);
    Py_DECREF(value);
    return status;
}

/* The line of the record whose values were just scanned (new bytes; NULL on an error). */
static PyObject *text_line(const Writer *w)
{
    const Texts *t = w->texts;
    PyObject *declared = NULL; /* made for the first getter or reader */
    Buffer b;
    buffer_init(&b);
    Py_ssize_t written = 0;
    for (Py_ssize_t i = 0; i < w->head_count; i++) {
        const HeadPart *part = &w->head[i];
        int status;
        if (part->constant != NULL) {
            status = put_text(&PLAIN, &b, part->constant);
        } else if (part->reader != NULL) {
            if (declared == NULL && (declared = declared_fields(t)) == NULL) {
                goto fail;
            }
            status = put_head_text(w, &b, PyObject_CallOneArg(part->reader, declared));
        } else {
            PyObject *value = slot_object(t, t->head_slots[i]);
            PyObject *text = value == NULL ? NULL : head_field_text(w, part, value);
            Py_XDECREF(value);
            status = put_head_text(w, &b, text);
        }
        if (status < 0) {
            goto fail;
        }
    }
    for (Py_ssize_t i = 0; i < w->count; i++) {
        const Step *step = &w->steps[i];
        int status;
        if (step->constant) {
            status = put_default(w, &b, &written, step);
        } else if (step->getter != NULL) {
            if (declared == NULL && (declared = declared_fields(t)) == NULL) {
                goto fail;
            }
            PyObject *value = PyObject_CallOneArg(step->getter, declared);
            status = value == NULL ? -1 : put_value(w, &b, &written, step, value);
            Py_XDECREF(value);
        } else {
            Py_ssize_t slot = t->step_slots[i];
            status = put_json_value(w, &b, &written, step, t->seen[slot] == t->record ? &t->values[slot] : NULL);
        }
        if (status < 0) {
            goto fail;
        }
    }
    Py_XDECREF(declared);
    PyObject *line = PyBytes_FromStringAndSize(b.data, b.size);
    buffer_free(&b);
    return line;
fail:
    Py_XDECREF(declared);
    buffer_free(&b);
    return NULL;
}

/* The current record's "_id" as str(record.get("_id", "")) gives it, and its "timestamp" when an int
 * (0 otherwise), appended to `ids` and `stamps`. */
static int put_identity(const Texts *t, PyObject *ids, PyObject *stamps)
{
    PyObject *id;
    if (t->seen[t->id_slot] != t->record) {
        id = PyUnicode_FromStringAndSize(NULL, 0);
    } else {
        PyObject *value = value_object(t, &t->values[t->id_slot]);
        id = value == NULL ? NULL : PyObject_Str(value);
        Py_XDECREF(value);
    }
    const Value *stamp = &t->values[t->stamp_slot];
    long long number = t->seen[t->stamp_slot] == t->record && stamp->kind == JSON_INT ? stamp->number : 0;
    PyObject *time = PyLong_FromLongLong(number);
    int status = id == NULL || time == NULL || PyList_Append(ids, id) < 0 || PyList_Append(stamps, time) < 0;
    Py_XDECREF(id);
    Py_XDECREF(time);
    return status ? -1 : 0;
}

/* Scan one record (an object at p): its values into the slots; the byte after it, NULL when refused. */
static const unsigned char *scan_record(Texts *t, const unsigned char *p, const unsigned char *end)
{
    t->record++;
    if (p >= end || *p != '{') {
        return NULL;
    }
    p = skip_space(p + 1, end);
    if (p < end && *p == '}') {
        return p + 1;
    }
    for (int more = 1; more;) {
        const unsigned char *name;
        Py_ssize_t length;
        int escapes;
        if ((p = scan_member_name(p, end, &name, &length, &escapes)) == NULL || escapes) {
            return NULL; /* a key with an escape: orjson reads it (and the frame goes to orjson) */
        }
        Py_ssize_t slot = slot_of(t, (const char *)name, length);
        Value value;
        if ((p = scan_value(p, end, 1, &value)) == NULL) {
            return NULL;
        }
        if (slot >= 0) {
            t->values[slot] = value; /* a key given twice: the last wins, as in orjson's dict */
            t->seen[slot] = t->record;
        }
        if ((p = next_item(p, end, '}', &more)) == NULL) {
            return NULL;
        }
    }
    return p;
}

/* -- JSON lines: the record's own text ----------------------------------------------------------- */

/* A JSON route without a field list writes each record as orjson.dumps writes its dict. A record's text
 * in the spool often is exactly that already (the spool's own pages are orjson's; a tenant's text may
 * be): `write_frame` then ships those bytes as they are, and makes the others dumps(loads(text)). */

/* The escape at p (its backslash, in a scanned string) when it is one orjson writes: \" \\ \b \t \n \f \r,
 * and \u00xx (lower-case hex) for the other control characters; its length, or 0. */
static int canonical_escape(const unsigned char *p)
{
    switch (p[1]) {
    case '"': case '\\': case 'b': case 't': case 'n': case 'f': case 'r':
        return 2;
    case 'u':
        break;
    default:
        return 0;
    }
    if (p[2] != '0' || p[3] != '0' || (p[4] != '0' && p[4] != '1')) {
        return 0;
    }
    unsigned char low = p[5];
    int unit = (p[4] - '0') * 16 + (low >= '0' && low <= '9' ? low - '0' : low >= 'a' && low <= 'f' ? low - 'a' + 10 : -99);
    if (unit < 0 || unit == 0x08 || unit == 0x09 || unit == 0x0A || unit == 0x0C || unit == 0x0D) {
        return 0;
    }
    return 6;
}

/* Note a key of the object numbered `object` in the record at `record`: 0 when that object already had
 * it, 1 otherwise. Entries of objects numbered below `first` (earlier records) are free. */
static int new_key(Texts *t, uint32_t first, uint32_t object, const unsigned char *record,
                   const unsigned char *key, Py_ssize_t length)
{
    uint32_t hash = (uint32_t)name_hash((const char *)key, length);
    size_t i = hash & (KEY_TABLE - 1);
    for (; t->keys[i].object >= first; i = (i + 1) & (KEY_TABLE - 1)) {
        const KeySeen *seen = &t->keys[i];
        if (seen->object == object && seen->hash == hash && seen->length == (uint32_t)length &&
            memcmp(record + seen->offset, key, (size_t)length) == 0) {
            return 0;
        }
    }
    t->keys[i] = (KeySeen){object, hash, (uint32_t)(key - record), (uint32_t)length};
    return 1;
}

/* True when the scanned record at [p, end) is the text orjson.dumps writes for the dict orjson.loads
 * makes of it: no whitespace, no float (orjson writes its own shortest form), no "-0", escapes only as
 * orjson writes them, and no key twice in one object (the dict keeps one). */
static int is_canonical(Texts *t, const unsigned char *p, const unsigned char *end)
{
    uint32_t stack[MAX_DEPTH + 1]; /* per open container: its object number, 0 for an array */
    int depth = 0, expect_key = 0, keys = 0;
    const unsigned char *record = p;
    if (end - p > (Py_ssize_t)UINT32_MAX || t->objects > UINT32_MAX - (uint32_t)(end - p)) {
        memset(t->keys, 0, sizeof(t->keys)); /* the numbering starts again (after 4 billion objects) */
        t->objects = 0;
        if (end - p > (Py_ssize_t)UINT32_MAX) {
            return 0;
        }
    }
    uint32_t first = t->objects + 1;
    while (p < end) {
        unsigned char c = *p;
        switch (c) {
        case '{':
            if (depth > MAX_DEPTH) {
                return 0;
            }
            stack[depth++] = ++t->objects;
            expect_key = 1;
            p++;
            break;
        case '[':
            if (depth > MAX_DEPTH) {
                return 0;
            }
            stack[depth++] = 0;
            expect_key = 0;
            p++;
            break;
        case '}':
        case ']':
            depth--;
            expect_key = 0;
            p++;
            break;
        case ',':
            expect_key = depth > 0 && stack[depth - 1] != 0;
            p++;
            break;
        case ':':
            expect_key = 0;
            p++;
            break;
        case '"': {
            const unsigned char *text = ++p;
            for (;;) {
                p = skip_plain(p, end);
                while (STRING_CLASS[*p] == 0 || STRING_CLASS[*p] == 4) {
                    p++; /* a scanned string: its quote comes before `end` */
                }
                if (*p == '"') {
                    break;
                }
                int size = canonical_escape(p);
                if (size == 0) {
                    return 0;
                }
                p += size;
            }
            if (expect_key && (++keys > KEY_TABLE / 2 ||
                               !new_key(t, first, stack[depth - 1], record, text, p - text))) {
                return 0;
            }
            p++;
            break;
        }
        case '-':
            if (end - p >= 2 && p[1] == '0' && (end - p == 2 || p[2] < '0' || p[2] > '9')) {
                return 0; /* -0 reads as the int 0 */
            }
            p++;
            break;
        case 't': case 'n':
            p += 4;
            break;
        case 'f':
            p += 5;
            break;
        default:
            if (c >= '0' && c <= '9') {
                p++;
                break;
            }
            return 0; /* whitespace, or a float's '.', 'e', 'E', '+' */
        }
    }
    return 1;
}

/* The line of a JSON route for the record at [start, end) (new bytes; NULL on an error). */
static PyObject *raw_line(const Writer *w, const unsigned char *start, const unsigned char *end)
{
    PyObject *text = PyBytes_FromStringAndSize((const char *)start, end - start);
    if (text == NULL || is_canonical(w->texts, start, end)) {
        return text;
    }
    PyObject *record = PyObject_CallOneArg(w->texts->loads, text);
    Py_DECREF(text);
    if (record == NULL) {
        return NULL;
    }
    PyObject *line = PyObject_CallOneArg(w->render, record);
    Py_DECREF(record);
    if (line != NULL && !PyBytes_Check(line)) {
        PyErr_Format(PyExc_TypeError, "a JSON writer gave %.100s, not bytes", Py_TYPE(line)->tp_name);
        Py_CLEAR(line);
    }
    return line;
}

/* One record's output in `write_frame` (its line, id and timestamp), or in `pick_frame` (the dict of the
 * fields the writer declared); -1 on an error. */
static int put_record(const Writer *w, int pick, const unsigned char *at, const unsigned char *after,
                      PyObject *ids, PyObject *stamps, PyObject *lines)
{
    PyObject *out;
    if (pick) {
        out = declared_fields(w->texts);
    } else {
        out = w->escaping.mode == MODE_JSON ? raw_line(w, at, after) : text_line(w);
    }
    int status = out == NULL || PyList_Append(lines, out) < 0 || (!pick && put_identity(w->texts, ids, stamps) < 0);
    Py_XDECREF(out);
    return status ? -1 : 0;
}

/* The loop of `write_frame` and `pick_frame` over a frame's records, from index `first` on; `keep` (a
 * list, or NULL) says which of them to write. */
static PyObject *frame_records(Writer *w, Py_buffer *frame, Py_ssize_t first, PyObject *keep, int pick)
{
    Texts *t = w->texts;
    if (t == NULL || w->joint == NULL || t->busy) {
        PyErr_SetString(PyExc_TypeError, "this writer does not read records as JSON text now");
        return NULL;
    }
    t->busy = 1;
    PyObject *ids = PyList_New(0), *stamps = PyList_New(0), *lines = PyList_New(0), *result = NULL;
    const unsigned char *start = frame->buf, *end = start + frame->len, *p = skip_space(start, end);
    const unsigned char *at = p; /* the record being read */
    Py_ssize_t index = 0;
    if (ids == NULL || stamps == NULL || lines == NULL) {
        goto done;
    }
    if (p >= end || *p != '[') {
        goto refused;
    }
    p = skip_space(p + 1, end);
    if (p < end && *p == ']') {
        p++;
    } else {
        for (;;) {
            at = p;
            if ((p = scan_record(t, p, end)) == NULL) {
                goto refused;
            }
            if (index++ >= first) {
                int wanted = 1;
                if (keep != NULL) {
                    Py_ssize_t place = index - 1 - first;
                    if (place >= PyList_GET_SIZE(keep)) {
                        PyErr_SetString(PyExc_ValueError, "keep names fewer records than the frame holds");
                        goto done;
                    }
                    PyObject *verdict = Py_NewRef(PyList_GET_ITEM(keep, place));
                    wanted = PyObject_IsTrue(verdict);
                    Py_DECREF(verdict);
                    if (wanted < 0) {
                        goto done;
                    }
                }
                if (wanted && put_record(w, pick, at, p, ids, stamps, lines) < 0) {
                    goto done;
                }
            }
            p = skip_space(p, end);
            if (p < end && *p == ',') {
                p = skip_space(p + 1, end);
            } else if (p < end && *p == ']') {
                p++;
                break;
            } else {
                goto refused;
            }
        }
    }
    if (skip_space(p, end) != end) {
        goto refused;
    }
    result = pick ? Py_BuildValue("nO", index, lines) : Py_BuildValue("nOOO", index, ids, stamps, lines);
    goto done;
refused:
    PyErr_Format(PyExc_ValueError, "record %zd of the frame (from byte %zd) is not JSON this writer reads",
                 index, (Py_ssize_t)(at - start));
done:
    t->busy = 0;
    Py_XDECREF(ids);
    Py_XDECREF(stamps);
    Py_XDECREF(lines);
    return result;
}

/* Writer.write_frame(frame, first, keep=None) -> (records, ids, timestamps, lines): see the section's
 * comment; `keep`, a list of one truth value per record from `first` on, leaves out the false ones. */
static PyObject *writer_write_frame(PyObject *self, PyObject *args)
{
    Py_buffer frame;
    Py_ssize_t first;
    PyObject *keep = Py_None;
    if (!PyArg_ParseTuple(args, "y*n|O", &frame, &first, &keep)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (keep != Py_None && !PyList_Check(keep)) {
        PyErr_SetString(PyExc_TypeError, "keep is a list or None");
    } else {
        result = frame_records((Writer *)self, &frame, first, keep == Py_None ? NULL : keep, 0);
    }
    PyBuffer_Release(&frame);
    return result;
}

/* Writer.pick_frame(frame, first) -> (records, dicts): for each record from `first` on, a dict of the
 * fields this writer was given as `reads` (those the record has), as a filter reads them. */
static PyObject *writer_pick_frame(PyObject *self, PyObject *args)
{
    Py_buffer frame;
    Py_ssize_t first;
    if (!PyArg_ParseTuple(args, "y*n", &frame, &first)) {
        return NULL;
    }
    PyObject *result = frame_records((Writer *)self, &frame, first, NULL, 1);
    PyBuffer_Release(&frame);
    return result;
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

/* Free what `make_texts` made. */
static void free_texts(Texts *t)
{
    if (t == NULL) {
        return;
    }
    for (Py_ssize_t i = 0; i < t->slot_count; i++) {
        Py_XDECREF(t->names[i]);
    }
    Py_XDECREF(t->loads);
    PyMem_Free(t->names);
    PyMem_Free(t->table);
    PyMem_Free(t->step_slots);
    PyMem_Free(t->head_slots);
    PyMem_Free(t->reads);
    PyMem_Free(t->values);
    PyMem_Free(t->seen);
    PyMem_Free(t);
}

/* The slot of the field `name` (str), given one when it has none yet; -1 when the name has no UTF-8
 * (a lone surrogate: no valid JSON text names that key). */
static Py_ssize_t add_slot(Texts *t, PyObject *name)
{
    Py_ssize_t length;
    const char *utf8_name = PyUnicode_AsUTF8AndSize(name, &length); /* kept by the str itself */
    if (utf8_name == NULL) {
        PyErr_Clear();
        return -1;
    }
    size_t i = name_hash(utf8_name, length) & t->mask;
    for (; t->table[i].name != NULL; i = (i + 1) & t->mask) {
        if (t->table[i].length == length && memcmp(t->table[i].name, utf8_name, (size_t)length) == 0) {
            return t->table[i].slot;
        }
    }
    Py_ssize_t slot = t->slot_count++;
    t->names[slot] = Py_NewRef(name);
    t->table[i] = (Entry){utf8_name, length, slot};
    return slot;
}

/* Make `w` able to read records as JSON text: `reads` (a tuple of str, or None when a getter or a
 * reader did not declare what it reads) are the fields getters and readers are given; `loads` parses
 * a container's text. Leaves w->texts NULL when it cannot; -1 on an error. */
static int make_texts(Writer *w, PyObject *reads, PyObject *loads)
{
    if (reads == Py_None || loads == Py_None ||
        (w->escaping.mode == MODE_LEEF && w->escaping.delimiter >= 0x80)) {
        return 0; /* a non-ASCII delimiter: `put_json_text` copies non-ASCII characters as they are */
    }
    if (!PyTuple_Check(reads) || !PyCallable_Check(loads)) {
        PyErr_SetString(PyExc_TypeError, "reads is a tuple of str or None, loads a callable or None");
        return -1;
    }
    Py_ssize_t bound = w->count + w->head_count + PyTuple_GET_SIZE(reads) + 2;
    size_t size = 16;
    while (size < (size_t)bound * 2) {
        size *= 2;
    }
    Texts *t = PyMem_Calloc(1, sizeof(Texts));
    if (t == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->mask = size - 1;
    t->table = PyMem_Calloc(size, sizeof(Entry));
    t->names = PyMem_Calloc((size_t)bound, sizeof(PyObject *));
    t->values = PyMem_Calloc((size_t)bound, sizeof(Value));
    t->seen = PyMem_Calloc((size_t)bound, sizeof(unsigned long));
    t->step_slots = PyMem_Calloc((size_t)(w->count + 1), sizeof(Py_ssize_t));
    t->head_slots = PyMem_Calloc((size_t)(w->head_count + 1), sizeof(Py_ssize_t));
    t->reads = PyMem_Calloc((size_t)(PyTuple_GET_SIZE(reads) + 1), sizeof(Py_ssize_t));
    if (t->table == NULL || t->names == NULL || t->values == NULL || t->seen == NULL ||
        t->step_slots == NULL || t->head_slots == NULL || t->reads == NULL) {
        free_texts(t);
        PyErr_NoMemory();
        return -1;
    }
    t->loads = Py_NewRef(loads);
    int matchable = 1;
    for (Py_ssize_t i = 0; i < w->count; i++) {
        const Step *step = &w->steps[i];
        t->step_slots[i] = step->constant || step->getter != NULL ? -1 : add_slot(t, step->field);
        matchable &= step->constant || step->getter != NULL || t->step_slots[i] >= 0;
    }
    for (Py_ssize_t i = 0; i < w->head_count; i++) {
        const HeadPart *part = &w->head[i];
        t->head_slots[i] = part->field == NULL ? -1 : add_slot(t, part->field);
        matchable &= part->field == NULL || t->head_slots[i] >= 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(reads); i++) {
        PyObject *name = PyTuple_GET_ITEM(reads, i);
        if (!PyUnicode_Check(name)) {
            free_texts(t);
            PyErr_SetString(PyExc_TypeError, "reads is a tuple of str or None");
            return -1;
        }
        t->reads[t->read_count] = add_slot(t, name);
        matchable &= t->reads[t->read_count++] >= 0;
    }
    PyObject *id = PyUnicode_FromString("_id");
    PyObject *stamp = PyUnicode_FromString("timestamp");
    if (id == NULL || stamp == NULL) {
        Py_XDECREF(id);
        Py_XDECREF(stamp);
        free_texts(t);
        return -1;
    }
    t->id_slot = add_slot(t, id);
    t->stamp_slot = add_slot(t, stamp);
    Py_DECREF(id);
    Py_DECREF(stamp);
    if (!matchable) {
        free_texts(t); /* a field no JSON text can name: records are read as dicts */
        return 0;
    }
    for (int c = 0; c < 256; c++) {
        t->stop[c] = c >= 0x80 || c == '\\' || w->escaping.special[c];
    }
    w->texts = t;
    return 0;
}

/* Writer(head, steps, mode, delimiter, joint, render_text, reads=None, loads=None): mode 0 is CEF, 1 is
 * LEEF, 3 a JSON route's record as render_text(record) writes it; with `reads` and `loads` (see
 * `make_texts`) it reads records as JSON text too (`write_frame`). */
static PyObject *writer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *head, *steps, *delimiter, *joint, *render, *reads = Py_None, *loads = Py_None;
    int mode;
    static char *names[] = {"head", "steps", "mode", "delimiter", "joint", "render_text", "reads", "loads", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!iUSO|OO", names, &PyTuple_Type, &head, &PyTuple_Type,
                                     &steps, &mode, &delimiter, &joint, &render, &reads, &loads)) {
        return NULL;
    }
    if ((mode != MODE_CEF && mode != MODE_LEEF && mode != MODE_JSON) || PyUnicode_GET_LENGTH(delimiter) != 1 ||
        !PyCallable_Check(render) ||
        (mode == MODE_JSON && (PyTuple_GET_SIZE(head) > 0 || PyTuple_GET_SIZE(steps) > 0))) {
        PyErr_SetString(PyExc_ValueError, "mode is 0, 1 or 3 (JSON: no head, no steps), the delimiter one "
                                          "character, render_text callable");
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
    if (make_texts(w, reads, loads) < 0) {
        Py_DECREF(w);
        return NULL;
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
    if (w->texts != NULL) {
        Py_VISIT(w->texts->loads);
    }
    return 0;
}

static int writer_clear(PyObject *self)
{
    Writer *w = (Writer *)self;
    clear_parts(w);
    Py_CLEAR(w->joint);
    Py_CLEAR(w->render);
    Py_CLEAR(w->fields);
    free_texts(w->texts);
    w->texts = NULL;
    return 0;
}

static void writer_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    writer_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *writer_reads_json(PyObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((Writer *)self)->texts != NULL);
}

static PyMethodDef writer_methods[] = {
    {"write_frame", writer_write_frame, METH_VARARGS,
     "write_frame(frame, first, keep=None) -> (records, ids, timestamps, lines): the lines of a JSON "
     "array's records from index `first` on (those `keep` keeps), read from its text; ValueError for a "
     "frame to parse with orjson instead."},
    {"pick_frame", writer_pick_frame, METH_VARARGS,
     "pick_frame(frame, first) -> (records, dicts): the declared fields of each record from `first` on."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef writer_getset[] = {
    {"reads_json", writer_reads_json, NULL, "True when write_frame can run.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ce_daemon.logs._native.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Writer(head, steps, mode, delimiter, joint, render_text, reads=None, loads=None)(record) -> bytes",
    .tp_new = writer_new,
    .tp_dealloc = writer_dealloc,
    .tp_traverse = writer_traverse,
    .tp_clear = writer_clear,
    .tp_call = writer_call,
    .tp_methods = writer_methods,
    .tp_getset = writer_getset,
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ce_daemon.logs._native",
    .m_doc = "The CEF and LEEF line writer in C (see ce_daemon/logs/native.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void)
{
    init_string_class();
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
