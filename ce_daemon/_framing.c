/* Syslog frames of a whole batch, in C: the loop of SyslogFramer.frame_all (ce_daemon/framing.py), which
 * falls back to its own Python loop without this module. The same bytes either way.
 *
 * `frame_all(messages, timestamps, header_of, lf, second, head, limit, now, latest)` frames each message
 * after the header of its timestamp, as a stream carries them one after the other:
 *
 *   octet counting (lf false): "<length of header + message> <header><message>";
 *   LF (lf true):              "<header><message, each LF replaced by a space>\n".
 *
 * A message's header is `head` while its timestamp equals `second` (the last header made, kept by the
 * caller between batches); for any other timestamp it is `header_of(timestamp)`, which then becomes the
 * kept one (a page's records share a few dozen timestamps, so it is called rarely). It answers
 * (frames, second, head): the frames as one bytes, and the header kept for the next batch.
 *
 * When `now` is not None, an int timestamp that differs from the kept one and lies outside 1..`latest` is
 * framed as if it were `now`; the caller keeps `second` within that range too.
 *
 * It answers None, before calling anything, when it leaves the batch to the caller's loop: a message is
 * not a bytes object, or is longer than `limit` bytes (an int, or None for no limit; a negative limit fits
 * no message); the caller then looks at each one.
 * The two sequences must be as long as each other (ValueError otherwise, as zip(strict=True) raises).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* Raised whenever this file changes what it takes or answers: framing.py refuses a build of another. */
#define FRAMING_ABI 3

/* Decimal digits of n (n >= 0). */
static int digits(Py_ssize_t n)
{
    int count = 1;
    while (n >= 10) {
        n /= 10;
        count++;
    }
    return count;
}

/* n in decimal at out, then a space; where the writing ends. */
static char *put_count(char *out, Py_ssize_t n)
{
    int width = digits(n);
    for (int at = width - 1; at >= 0; at--) {
        out[at] = (char)('0' + n % 10);
        n /= 10;
    }
    out[width] = ' ';
    return out + width + 1;
}

static PyObject *framing_frame_all(PyObject *self, PyObject *args)
{
    PyObject *messages_in, *timestamps_in, *header_of, *second, *head, *limit_in, *now;
    int lf;
    long long latest;
    if (!PyArg_ParseTuple(args, "OOOpOO!OOL", &messages_in, &timestamps_in, &header_of, &lf, &second,
                          &PyBytes_Type, &head, &limit_in, &now, &latest)) {
        return NULL;
    }
    int limited = limit_in != Py_None, past = 0;
    long long limit = limited ? PyLong_AsLongLongAndOverflow(limit_in, &past) : 0;
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (past) { /* beyond any size (no limit), or below any (fits nothing) */
        limited = past < 0;
        limit = -1;
    }
    PyObject *result = NULL, *heads = NULL, *frames = NULL;
    PyObject **used = NULL; /* the header of each message (borrowed: `heads` holds them) */
    PyObject *messages = PySequence_Fast(messages_in, "messages must be a sequence");
    PyObject *timestamps = messages ? PySequence_Fast(timestamps_in, "timestamps must be a sequence") : NULL;
    if (timestamps == NULL) {
        goto done;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(messages);
    if (PySequence_Fast_GET_SIZE(timestamps) != count) {
        PyErr_SetString(PyExc_ValueError, "frame_all() needs one timestamp per message");
        goto done;
    }
    PyObject **message_items = PySequence_Fast_ITEMS(messages);
    PyObject **stamp_items = PySequence_Fast_ITEMS(timestamps);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *message = message_items[i];
        if (!PyBytes_CheckExact(message) || (limited && PyBytes_GET_SIZE(message) > limit)) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    heads = PyList_New(0);
    used = PyMem_Malloc((size_t)(count ? count : 1) * sizeof(PyObject *));
    if (heads == NULL || used == NULL || PyList_Append(heads, head) < 0) {
        if (used == NULL) {
            PyErr_NoMemory();
        }
        goto done;
    }
    Py_INCREF(second);
    Py_INCREF(head);
    /* First pass: each message's header, and the size of all frames. */
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *stamp = stamp_items[i];
        int differs = PyObject_RichCompareBool(stamp, second, Py_NE);
        if (differs < 0) {
            goto failed;
        }
        if (differs && now != Py_None && PyLong_Check(stamp)) {
            int overflow = 0;
            long long value = PyLong_AsLongLongAndOverflow(stamp, &overflow);
            if (value == -1 && PyErr_Occurred()) {
                goto failed;
            }
            if (overflow || value <= 0 || value > latest) {
                stamp = now;
                differs = PyObject_RichCompareBool(stamp, second, Py_NE);
                if (differs < 0) {
                    goto failed;
                }
            }
        }
        if (differs) {
            PyObject *made = PyObject_CallOneArg(header_of, stamp);
            if (made == NULL) {
                goto failed;
            }
            if (!PyBytes_Check(made)) {
                PyErr_Format(PyExc_TypeError, "header_of() returned %.100s, not bytes", Py_TYPE(made)->tp_name);
                Py_DECREF(made);
                goto failed;
            }
            if (PyList_Append(heads, made) < 0) {
                Py_DECREF(made);
                goto failed;
            }
            Py_SETREF(head, made);
            Py_SETREF(second, Py_NewRef(stamp));
        }
        used[i] = head;
        Py_ssize_t length = PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(message_items[i]);
        Py_ssize_t frame = lf ? length + 1 : digits(length) + 1 + length;
        if (frame > PY_SSIZE_T_MAX - total) {
            PyErr_NoMemory();
            goto failed;
        }
        total += frame;
    }
    frames = PyBytes_FromStringAndSize(NULL, total);
    if (frames == NULL) {
        goto failed;
    }
    /* Second pass: each frame copied into place. */
    char *out = PyBytes_AS_STRING(frames);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t head_size = PyBytes_GET_SIZE(used[i]);
        Py_ssize_t message_size = PyBytes_GET_SIZE(message_items[i]);
        if (!lf) {
            out = put_count(out, head_size + message_size);
        }
        memcpy(out, PyBytes_AS_STRING(used[i]), (size_t)head_size);
        out += head_size;
        memcpy(out, PyBytes_AS_STRING(message_items[i]), (size_t)message_size);
        if (lf) {
            for (char *at = memchr(out, '\n', (size_t)message_size); at != NULL;
                 at = memchr(at + 1, '\n', (size_t)(out + message_size - at - 1))) {
                *at = ' ';
            }
            out[message_size] = '\n';
            out += 1;
        }
        out += message_size;
    }
    result = Py_BuildValue("(NOO)", frames, second, head);
    frames = NULL;
failed:
    Py_DECREF(second);
    Py_DECREF(head);
done:
    Py_XDECREF(frames);
    PyMem_Free(used);
    Py_XDECREF(heads);
    Py_XDECREF(timestamps);
    Py_XDECREF(messages);
    return result;
}

static PyMethodDef framing_methods[] = {
    {"frame_all", framing_frame_all, METH_VARARGS, "Syslog frames of a batch of messages (see the module)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef framing_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ce_daemon._framing",
    .m_doc = "Syslog frames of a whole batch (see ce_daemon/framing.py, SyslogFramer.frame_all).",
    .m_size = -1,
    .m_methods = framing_methods,
};

PyMODINIT_FUNC PyInit__framing(void)
{
    PyObject *module = PyModule_Create(&framing_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "ABI", FRAMING_ABI) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
