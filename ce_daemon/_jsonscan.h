/* JSON text read as strictly as orjson reads it, without building anything: the scanner shared by the
 * C writer of log lines (ce_daemon/logs/_native.c) and the page splitter of ingestion
 * (ce_daemon/netskope/_pages.c).
 *
 * A text the scanner takes is one orjson takes and reads to the same values: the grammar, UTF-8 (no
 * overlong forms, no surrogates), escapes and surrogate pairs, control characters in strings. It is
 * stricter where orjson has rules of its own: ints beyond 64 bits (signed), floats longer than
 * LONGEST_FLOAT characters, nesting deeper than MAX_DEPTH. Its callers send what it refuses the slow way
 * (orjson), so refusing more than orjson costs time, never a different result.
 *
 * Everything here is static: each extension that includes it has its own copy (call
 * `init_string_class` once, from the module's init).
 */

#ifndef CE_DAEMON_JSONSCAN_H
#define CE_DAEMON_JSONSCAN_H

#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#if defined(__GNUC__)
#define SCAN_MAYBE_UNUSED __attribute__((unused))
#else
#define SCAN_MAYBE_UNUSED
#endif

/* A value read from JSON text: where it is in the text and what it is. */
enum { JSON_STRING = 1, JSON_ESCAPED, JSON_INT, JSON_FLOAT, JSON_TRUE, JSON_FALSE, JSON_NULL, JSON_CONTAINER };

typedef struct {
    const unsigned char *start; /* a string's first byte after its quote; any other value's first byte */
    Py_ssize_t length;          /* a string's bytes between its quotes; any other value's bytes */
    int kind;                   /* JSON_... */
    long long number;           /* JSON_INT */
    double real;                /* JSON_FLOAT */
} Value;

/* A container is refused when it opens at `depth` MAX_DEPTH or beyond: `scan_value(p, end, depth, v)`
 * counts from the `depth` it is given, so a caller that allows N levels of nesting within a value passes
 * MAX_DEPTH - N (ingestion bounds each record that way). */
#define MAX_DEPTH 512
#define LONGEST_FLOAT 400

/* The bytes a string's scan stops at: 1 the closing quote, 2 an escape, 3 a control (refused), 4 the
 * lead byte of a UTF-8 sequence. */
static unsigned char STRING_CLASS[256];

SCAN_MAYBE_UNUSED static void init_string_class(void)
{
    for (int c = 0; c < 256; c++) {
        STRING_CLASS[c] = c == '"' ? 1 : c == '\\' ? 2 : c < 0x20 ? 3 : c >= 0x80 ? 4 : 0;
    }
}

/* Eight bytes at a time: a word with none of '"', '\\', a control character or a non-ASCII byte is passed
 * whole (the common run of a string), the byte loops then take over. Exact: a word is passed only when
 * none of its bytes is one of those. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

SCAN_MAYBE_UNUSED static int plain_word(uint64_t word)
{
    uint64_t quote = word ^ (ONES * '"'), backslash = word ^ (ONES * '\\');
    uint64_t found = ((quote - ONES) & ~quote) | ((backslash - ONES) & ~backslash) | (word - ONES * 0x20) | word;
    return (found & HIGHS) == 0;
}

/* A byte from p on, at or before the first that `plain_word` stops at (`end` when there is none): sixteen
 * bytes at a time with SSE2 (every x86-64 has it; the first such byte exactly), then eight at a time. */
SCAN_MAYBE_UNUSED static const unsigned char *skip_plain(const unsigned char *p, const unsigned char *end)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)p);
        /* signed: a byte >= 0x80 is negative, so below 0x20 too */
        __m128i stops = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(chunk, quote), _mm_cmpeq_epi8(chunk, backslash)),
                                     _mm_cmplt_epi8(chunk, space));
        int mask = _mm_movemask_epi8(stops);
        if (mask != 0) {
            return p + __builtin_ctz((unsigned)mask);
        }
        p += 16;
    }
#endif
    while (end - p >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        if (!plain_word(word)) {
            break;
        }
        p += 8;
    }
    return p;
}

SCAN_MAYBE_UNUSED static const unsigned char *skip_space(const unsigned char *p, const unsigned char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) {
        p++;
    }
    return p;
}

/* Four hex digits at p as a code unit; -1 when they are not. */
SCAN_MAYBE_UNUSED static long hex4(const unsigned char *p)
{
    long unit = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (digit < 0) {
            return -1;
        }
        unit = unit * 16 + digit;
    }
    return unit;
}

/* The length of the valid UTF-8 sequence at p (its lead byte >= 0x80), 0 when it is not one:
 * overlong forms, surrogates and code points beyond U+10FFFF are not. */
SCAN_MAYBE_UNUSED static int utf8_sequence(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    int length;
    unsigned char low = 0x80, high = 0xBF; /* the second byte's range */
    if (c >= 0xC2 && c <= 0xDF) {
        length = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        length = 3;
        low = c == 0xE0 ? 0xA0 : 0x80;
        high = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
        length = 4;
        low = c == 0xF0 ? 0x90 : 0x80;
        high = c == 0xF4 ? 0x8F : 0xBF;
    } else {
        return 0;
    }
    if (end - p < length || p[1] < low || p[1] > high) {
        return 0;
    }
    for (int i = 2; i < length; i++) {
        if (p[i] < 0x80 || p[i] > 0xBF) {
            return 0;
        }
    }
    return length;
}

/* The escape at p (its backslash): its code point, and its length in *size; -1 when refused. A high
 * surrogate must be followed by a low one (the pair is one code point); a lone one is refused. */
SCAN_MAYBE_UNUSED static long read_escape(const unsigned char *p, const unsigned char *end, Py_ssize_t *size)
{
    if (end - p < 2) {
        return -1;
    }
    *size = 2;
    switch (p[1]) {
    case '"': return '"';
    case '\\': return '\\';
    case '/': return '/';
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'u': break;
    default: return -1;
    }
    long unit = end - p >= 6 ? hex4(p + 2) : -1;
    *size = 6;
    if (unit < 0xD800 || unit > 0xDFFF) {
        return unit;
    }
    if (unit > 0xDBFF || end - p < 12 || p[6] != '\\' || p[7] != 'u') {
        return -1;
    }
    long low = hex4(p + 8);
    if (low < 0xDC00 || low > 0xDFFF) {
        return -1;
    }
    *size = 12;
    return 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
}

/* A string from p (after its opening quote) to its closing quote: the byte after that quote, NULL
 * when refused; *escapes says whether it holds any. */
SCAN_MAYBE_UNUSED static const unsigned char *scan_string(const unsigned char *p, const unsigned char *end, int *escapes)
{
    *escapes = 0;
    for (;;) {
        p = skip_plain(p, end);
        while (p < end && STRING_CLASS[*p] == 0) {
            p++;
        }
        if (p >= end) {
            return NULL;
        }
        Py_ssize_t size;
        switch (STRING_CLASS[*p]) {
        case 1:
            return p + 1;
        case 2:
            if (read_escape(p, end, &size) < 0) {
                return NULL;
            }
            *escapes = 1;
            p += size;
            break;
        case 3:
            return NULL;
        default:
            size = utf8_sequence(p, end);
            if (size == 0) {
                return NULL;
            }
            p += size;
        }
    }
}

SCAN_MAYBE_UNUSED static int is_digit(const unsigned char *p, const unsigned char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

/* One or more digits at p: the byte after them, NULL when there is none. */
SCAN_MAYBE_UNUSED static const unsigned char *scan_digits(const unsigned char *p, const unsigned char *end)
{
    if (!is_digit(p, end)) {
        return NULL;
    }
    while (is_digit(p, end)) {
        p++;
    }
    return p;
}

/* A number at p, as JSON writes one: the byte after it, NULL when refused. An int is read into
 * v->number (refused beyond 64 bits: orjson's rules for those are its own); a float into v->real
 * (refused when infinite, as orjson refuses it). */
SCAN_MAYBE_UNUSED static const unsigned char *scan_number(const unsigned char *p, const unsigned char *end, Value *v)
{
    const unsigned char *start = p;
    int negative = p < end && *p == '-';
    p += negative;
    if (!is_digit(p, end)) {
        return NULL;
    }
    p = *p == '0' ? p + 1 : scan_digits(p, end);
    const unsigned char *digits_end = p;
    int real = 0;
    if (p < end && *p == '.') {
        if ((p = scan_digits(p + 1, end)) == NULL) {
            return NULL;
        }
        real = 1;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) {
            p++;
        }
        if ((p = scan_digits(p, end)) == NULL) {
            return NULL;
        }
        real = 1;
    }
    v->length = p - start;
    if (real) {
        char text[LONGEST_FLOAT + 1];
        if (v->length > LONGEST_FLOAT) {
            return NULL;
        }
        memcpy(text, start, (size_t)v->length);
        text[v->length] = '\0';
        v->real = PyOS_string_to_double(text, NULL, NULL); /* correctly rounded; HUGE_VAL beyond */
        if (v->real == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return NULL;
        }
        if (Py_IS_INFINITY(v->real)) {
            return NULL;
        }
        v->kind = JSON_FLOAT;
        return p;
    }
    unsigned long long magnitude = 0;
    for (const unsigned char *d = start + negative; d < digits_end; d++) {
        unsigned digit = (unsigned)(*d - '0');
        if (magnitude > (ULLONG_MAX - digit) / 10) {
            return NULL;
        }
        magnitude = magnitude * 10 + digit;
    }
    if (magnitude > (unsigned long long)LLONG_MAX + (unsigned long long)negative) {
        return NULL;
    }
    v->number = negative ? (long long)(0ULL - magnitude) : (long long)magnitude;
    v->kind = JSON_INT;
    return p;
}

/* An object member's name at p (its opening quote) and the colon after it: the first byte of its value
 * (spaces skipped), NULL when refused; the name's bytes between its quotes in *name and *length, and
 * whether it holds an escape in *escapes. */
SCAN_MAYBE_UNUSED static const unsigned char *scan_member_name(const unsigned char *p, const unsigned char *end,
                                                               const unsigned char **name, Py_ssize_t *length,
                                                               int *escapes)
{
    if (p >= end || *p != '"') {
        return NULL;
    }
    const unsigned char *after = scan_string(p + 1, end, escapes);
    if (after == NULL) {
        return NULL;
    }
    *name = p + 1;
    *length = after - 1 - *name;
    p = skip_space(after, end);
    return p < end && *p == ':' ? skip_space(p + 1, end) : NULL;
}

/* After an item of an object or an array that `close` ends: the next item's first byte (spaces skipped)
 * and *more 1, or the byte after `close` and *more 0; NULL when neither comes. */
SCAN_MAYBE_UNUSED static const unsigned char *next_item(const unsigned char *p, const unsigned char *end,
                                                        unsigned char close, int *more)
{
    p = skip_space(p, end);
    if (p < end && *p == ',') {
        *more = 1;
        return skip_space(p + 1, end);
    }
    *more = 0;
    return p < end && *p == close ? p + 1 : NULL;
}

SCAN_MAYBE_UNUSED static const unsigned char *scan_value(const unsigned char *p, const unsigned char *end, int depth, Value *v);

/* An object or an array at p, checked to its end: the byte after it, NULL when refused. */
SCAN_MAYBE_UNUSED static const unsigned char *scan_container(const unsigned char *p, const unsigned char *end, int depth)
{
    if (depth >= MAX_DEPTH) {
        return NULL;
    }
    int object = *p == '{';
    unsigned char close = object ? '}' : ']';
    p = skip_space(p + 1, end);
    if (p < end && *p == close) {
        return p + 1;
    }
    for (int more = 1; more;) {
        if (object) {
            const unsigned char *name;
            Py_ssize_t length;
            int escapes;
            if ((p = scan_member_name(p, end, &name, &length, &escapes)) == NULL) {
                return NULL;
            }
        }
        Value inner;
        if ((p = scan_value(p, end, depth + 1, &inner)) == NULL || (p = next_item(p, end, close, &more)) == NULL) {
            return NULL;
        }
    }
    return p;
}

SCAN_MAYBE_UNUSED static const unsigned char *scan_literal(const unsigned char *p, const unsigned char *end, const char *word,
                                         int kind, Value *v)
{
    size_t size = strlen(word);
    if ((size_t)(end - p) < size || memcmp(p, word, size) != 0) {
        return NULL;
    }
    v->kind = kind;
    v->length = (Py_ssize_t)size;
    return p + size;
}

/* Any JSON value at p: the byte after it, NULL when refused; `v` says what and where it is (a string's
 * bytes between its quotes). */
SCAN_MAYBE_UNUSED static const unsigned char *scan_value(const unsigned char *p, const unsigned char *end, int depth, Value *v)
{
    if (p >= end) {
        return NULL;
    }
    v->start = p;
    switch (*p) {
    case '"': {
        int escapes;
        const unsigned char *after = scan_string(p + 1, end, &escapes);
        if (after == NULL) {
            return NULL;
        }
        v->kind = escapes ? JSON_ESCAPED : JSON_STRING;
        v->start = p + 1;
        v->length = after - 1 - v->start;
        return after;
    }
    case '{':
    case '[': {
        const unsigned char *after = scan_container(p, end, depth);
        if (after == NULL) {
            return NULL;
        }
        v->kind = JSON_CONTAINER;
        v->length = after - p;
        return after;
    }
    case 't': return scan_literal(p, end, "true", JSON_TRUE, v);
    case 'f': return scan_literal(p, end, "false", JSON_FALSE, v);
    case 'n': return scan_literal(p, end, "null", JSON_NULL, v);
    default: return scan_number(p, end, v);
    }
}

#endif
