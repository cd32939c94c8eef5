/*
 * C quick paths for the SIP parser (engine/sip/message/core.py, grammar.py).
 *
 * Optional: the pure-Python parser is complete without this module, and
 * SWITCHBOARD_NO_EXTENSIONS=1 makes the engine ignore it. Each function here
 * recognises only the common shape of its input and otherwise hands the
 * input to the Python code, so that for every input the result (value or
 * ParseError) is the one the Python parser gives. tests/test_speedups.py
 * checks that, property by property, against the Python code.
 *
 *   scan(data, line_keys, other_keys)
 *       The fast scan of core.parse: the message head split at CRLF into
 *       the start line and a dict {header key: raw value of its first
 *       line}; None when the Python code must look (unknown header name,
 *       folding, bare LF, no blank line...). Returns
 *       (head text, start line, first, body, content_length_twice).
 *   parse_uri(text), parse_address(text[, what]), parse_via(text), parse_cseq(text)
 *       The quick paths of grammar.py (the _URI_QUICK_RE, _ADDR_QUICK_RE and
 *       _VIA_QUICK_RE shapes, "digits SP METHOD" for CSeq; same groups, same
 *       tuples); any other input goes to the general Python parser given to
 *       setup().
 *
 * Every read is bounds-checked against the length of the input; nothing is
 * written but Python objects. Inputs are untrusted network data.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_HEADERS 256

/* Character classes of the quick patterns in grammar.py (ASCII only). */
enum {
    C_USER = 1,    /* _Q_USER  [!#-9;=?A-Z\[-~]  */
    C_UPAR = 2,    /* _Q_UPAR  [!#-+\--:A-~]      */
    C_PVAL = 4,    /* _Q_PVAL  [!#-+\--:?-~]      */
    C_PNAME = 8,   /* [a-z0-9\-] (after the first [a-z]) */
    C_TOKEN = 16,  /* _Q_TOKEN [A-Za-z0-9\-.!%*_+`'~] */
    C_HOST = 32,   /* [a-z0-9.\-] */
    C_V6 = 64,     /* [0-9a-f:.] */
};
static unsigned char cls[256];

static void
set_range(int lo, int hi, unsigned char bit)
{
    for (int c = lo; c <= hi; c++)
        cls[c] |= bit;
}

static void
set_chars(const char *chars, unsigned char bit)
{
    for (; *chars; chars++)
        cls[(unsigned char)*chars] |= bit;
}

static void
init_classes(void)
{
    set_range('!', '!', C_USER); set_range('#', '9', C_USER); set_chars(";=?", C_USER);
    set_range('A', 'Z', C_USER); set_range('[', '~', C_USER);
    set_range('!', '!', C_UPAR); set_range('#', '+', C_UPAR); set_range('-', ':', C_UPAR);
    set_range('A', '~', C_UPAR);
    set_range('!', '!', C_PVAL); set_range('#', '+', C_PVAL); set_range('-', ':', C_PVAL);
    set_range('?', '~', C_PVAL);
    set_range('a', 'z', C_PNAME); set_range('0', '9', C_PNAME); set_chars("-", C_PNAME);
    set_range('A', 'Z', C_TOKEN); set_range('a', 'z', C_TOKEN); set_range('0', '9', C_TOKEN);
    set_chars("-.!%*_+`'~", C_TOKEN);
    set_range('a', 'z', C_HOST); set_range('0', '9', C_HOST); set_chars(".-", C_HOST);
    set_range('0', '9', C_V6); set_range('a', 'f', C_V6); set_chars(":.", C_V6);
}

#define IS(c, bit) (cls[(unsigned char)(c)] & (bit))
#define DIGIT(c) ((c) >= '0' && (c) <= '9')
#define LOWER(c) ((c) >= 'a' && (c) <= 'z')

/* Set by setup(): the NamedTuple classes and the general Python parsers. */
static PyTypeObject *uri_type, *address_type, *via_type, *cseq_type;
static PyObject *uri_general, *address_general, *via_general, *cseq_general;
/* Interned constants. */
static PyObject *s_sip, *s_sips, *s_udp, *s_tcp, *s_tls, *s_empty;

/* ------------------------------------------------------------------ */
/* Offsets found by the scanners; nothing is allocated until a shape   */
/* is known to match.                                                  */

#define MAX_PARAMS 3

typedef struct {
    int n;
    Py_ssize_t name[MAX_PARAMS][2];
    Py_ssize_t value[MAX_PARAMS][2];  /* value[i][0] < 0: a flag without value */
} params_off;

typedef struct {
    int sips;
    Py_ssize_t user[2];  /* user[0] < 0: no user part */
    Py_ssize_t host[2];
    long port;           /* < 0: no port */
    params_off params;
} uri_off;

/* ``:port`` at s[*i]: 1-5 digits, at most 65535 (the Python quick paths hand
   a larger number to the general parser). Returns 0 when not quick. */
static int
scan_port(const Py_UCS1 *s, Py_ssize_t n, Py_ssize_t *i, long *port)
{
    *port = -1;
    if (*i >= n || s[*i] != ':')
        return 1;
    Py_ssize_t j = *i + 1;
    long value = 0;
    while (j < n && DIGIT(s[j])) {
        if (j - *i > 5)
            return 0;
        value = value * 10 + (s[j] - '0');
        j++;
    }
    if (j == *i + 1 || value > 65535)
        return 0;
    *port = value;
    *i = j;
    return 1;
}

/* Up to ``max`` ``;name[=value]`` parameters with lower-case names and values
   of class ``vbit``. ``lead_ws``: LWS allowed around the first ';'. */
static int
scan_params(const Py_UCS1 *s, Py_ssize_t n, Py_ssize_t *pi, int max, unsigned char vbit,
            int lead_ws, params_off *out)
{
    Py_ssize_t i = *pi;
    out->n = 0;
    for (;;) {
        if (lead_ws && out->n == 0) {
            Py_ssize_t j = i;
            while (j < n && (s[j] == ' ' || s[j] == '\t'))
                j++;
            if (j >= n || s[j] != ';')
                break;
            j++;
            while (j < n && (s[j] == ' ' || s[j] == '\t'))
                j++;
            i = j;
        }
        else {
            if (i >= n || s[i] != ';')
                break;
            i++;
        }
        if (out->n == max)
            return 0;
        if (i >= n || !LOWER(s[i]))
            return 0;
        Py_ssize_t a = i;
        while (i < n && IS(s[i], C_PNAME))
            i++;
        out->name[out->n][0] = a;
        out->name[out->n][1] = i;
        out->value[out->n][0] = -1;
        if (i < n && s[i] == '=') {
            a = ++i;
            while (i < n && IS(s[i], vbit))
                i++;
            if (i == a)
                return 0;
            out->value[out->n][0] = a;
            out->value[out->n][1] = i;
        }
        out->n++;
    }
    *pi = i;
    return 1;
}

/* _Q_URI at s[*i]: (sips?):(user@)?host(:port)?(;param){0,2}. */
static int
scan_uri(const Py_UCS1 *s, Py_ssize_t n, Py_ssize_t *pi, uri_off *out)
{
    Py_ssize_t i = *pi;
    if (n - i >= 4 && memcmp(s + i, "sip:", 4) == 0) {
        out->sips = 0;
        i += 4;
    }
    else if (n - i >= 5 && memcmp(s + i, "sips:", 5) == 0) {
        out->sips = 1;
        i += 5;
    }
    else
        return 0;
    Py_ssize_t j = i;
    while (j < n && IS(s[j], C_USER))
        j++;
    out->user[0] = -1;
    if (j > i && j < n && s[j] == '@') {
        out->user[0] = i;
        out->user[1] = j;
        i = j + 1;
    }
    /* [a-z0-9](?:[a-z0-9.\-]*[a-z0-9.]|) */
    if (i >= n || !(LOWER(s[i]) || DIGIT(s[i])))
        return 0;
    Py_ssize_t a = i;
    while (i < n && IS(s[i], C_HOST))
        i++;
    if (i - a > 1 && s[i - 1] == '-')
        return 0;
    out->host[0] = a;
    out->host[1] = i;
    if (!scan_port(s, n, &i, &out->port))
        return 0;
    if (!scan_params(s, n, &i, 2, C_UPAR, 0, &out->params))
        return 0;
    *pi = i;
    return 1;
}

/* ------------------------------------------------------------------ */
/* Building the values                                                 */

static PyObject *
sub(PyObject *text, Py_ssize_t a, Py_ssize_t b)
{
    return PyUnicode_Substring(text, a, b);
}

static PyObject *
build_params(PyObject *text, const params_off *p)
{
    PyObject *out = PyTuple_New(p->n);
    if (out == NULL)
        return NULL;
    for (int k = 0; k < p->n; k++) {
        PyObject *name = sub(text, p->name[k][0], p->name[k][1]);
        PyObject *value;
        if (p->value[k][0] < 0) {
            value = Py_NewRef(Py_None);
        }
        else {
            value = sub(text, p->value[k][0], p->value[k][1]);
        }
        PyObject *pair = (name && value) ? PyTuple_Pack(2, name, value) : NULL;
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (pair == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, k, pair);
    }
    return out;
}

/* An instance of the NamedTuple ``type`` holding ``items`` (references
   stolen, even on failure), as tuple.__new__(type, items) makes it. */
static PyObject *
new_named(PyTypeObject *type, PyObject **items, Py_ssize_t count)
{
    for (Py_ssize_t k = 0; k < count; k++) {
        if (items[k] == NULL) {
            for (Py_ssize_t m = 0; m < count; m++)
                Py_XDECREF(items[m]);
            return NULL;
        }
    }
    PyObject *obj = type->tp_alloc(type, count);
    if (obj == NULL) {
        for (Py_ssize_t m = 0; m < count; m++)
            Py_DECREF(items[m]);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < count; k++)
        PyTuple_SET_ITEM(obj, k, items[k]);
    return obj;
}

static PyObject *
port_object(long port)
{
    return port < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(port);
}

static PyObject *
build_uri(PyObject *text, const uri_off *u)
{
    PyObject *items[8];
    items[0] = Py_NewRef(u->sips ? s_sips : s_sip);
    items[1] = u->user[0] < 0 ? Py_NewRef(Py_None) : sub(text, u->user[0], u->user[1]);
    items[2] = Py_NewRef(Py_None);
    items[3] = sub(text, u->host[0], u->host[1]);
    items[4] = port_object(u->port);
    items[5] = build_params(text, &u->params);
    items[6] = Py_NewRef(s_empty);
    items[7] = Py_NewRef(Py_None);
    return new_named(uri_type, items, 8);
}

/* The general parser for what the quick path does not take. */
static PyObject *
fallback(PyObject *general, PyObject *const *args, Py_ssize_t nargs)
{
    return PyObject_Vectorcall(general, args, nargs, NULL);
}

/* setup() must have run: the value parsers need the types and the fallbacks. */
static int
not_set_up(void)
{
    if (cseq_general != NULL)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "engine.sip.message._speedups: setup() was not called");
    return 1;
}

/* The ASCII characters of ``text``, or NULL when it is not an ASCII str. */
static const Py_UCS1 *
ascii_data(PyObject *text, Py_ssize_t *n)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text))
        return NULL;
    *n = PyUnicode_GET_LENGTH(text);
    return PyUnicode_1BYTE_DATA(text);
}

static PyObject *
parse_uri(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n, i = 0;
    uri_off u;
    if (not_set_up())
        return NULL;
    const Py_UCS1 *s = nargs == 1 ? ascii_data(args[0], &n) : NULL;
    if (s == NULL || !scan_uri(s, n, &i, &u) || i != n)
        return fallback(uri_general, args, nargs);
    return build_uri(args[0], &u);
}

static PyObject *
parse_address(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n, i = 0, d0 = -1, d1 = -1;
    uri_off u;
    params_off p;
    if (not_set_up())
        return NULL;
    const Py_UCS1 *s = (nargs == 1 || nargs == 2) ? ascii_data(args[0], &n) : NULL;
    if (s == NULL || n == 0)
        return fallback(address_general, args, nargs);
    /* ("[^"\\]*"|TOKEN+(?:[ \t]+TOKEN+)*)[ \t]*  or nothing */
    if (s[0] == '"') {
        i = 1;
        while (i < n && s[i] != '"' && s[i] != '\\')
            i++;
        if (i >= n || s[i] != '"')
            return fallback(address_general, args, nargs);
        d0 = 0;
        d1 = ++i;
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
    }
    else if (IS(s[0], C_TOKEN)) {
        for (;;) {
            while (i < n && IS(s[i], C_TOKEN))
                i++;
            d1 = i;
            while (i < n && (s[i] == ' ' || s[i] == '\t'))
                i++;
            if (i == d1 || i >= n || !IS(s[i], C_TOKEN))
                break;
        }
        d0 = 0;
    }
    if (i >= n || s[i] != '<')
        return fallback(address_general, args, nargs);
    i++;
    if (!scan_uri(s, n, &i, &u) || i >= n || s[i] != '>')
        return fallback(address_general, args, nargs);
    i++;
    if (!scan_params(s, n, &i, 2, C_PVAL, 1, &p) || i != n)
        return fallback(address_general, args, nargs);
    PyObject *text = args[0];
    PyObject *items[4];
    items[0] = build_uri(text, &u);
    items[1] = d0 < 0 ? Py_NewRef(Py_None) : sub(text, d0, d1);
    items[2] = build_params(text, &p);
    items[3] = Py_NewRef(Py_True);
    return new_named(address_type, items, 4);
}

static PyObject *
parse_via(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n, i = 8;
    long port;
    params_off p;
    if (not_set_up())
        return NULL;
    const Py_UCS1 *s = nargs == 1 ? ascii_data(args[0], &n) : NULL;
    if (s == NULL || n < 8 || memcmp(s, "SIP/2.0/", 8) != 0)
        return fallback(via_general, args, nargs);
    /* ([A-Z]+) ([a-z0-9.\-]+|\[[0-9a-f:.]+\])(?::port|)(;param){0,3} */
    while (i < n && s[i] >= 'A' && s[i] <= 'Z')
        i++;
    Py_ssize_t t1 = i;
    if (t1 == 8 || i >= n || s[i] != ' ')
        return fallback(via_general, args, nargs);
    Py_ssize_t h0 = ++i;
    if (i < n && s[i] == '[') {
        i++;
        while (i < n && IS(s[i], C_V6))
            i++;
        if (i == h0 + 1 || i >= n || s[i] != ']')
            return fallback(via_general, args, nargs);
        i++;
    }
    else {
        while (i < n && IS(s[i], C_HOST))
            i++;
        if (i == h0)
            return fallback(via_general, args, nargs);
    }
    Py_ssize_t h1 = i;
    if (!scan_port(s, n, &i, &port) || !scan_params(s, n, &i, 3, C_PVAL, 0, &p) || i != n)
        return fallback(via_general, args, nargs);
    PyObject *text = args[0];
    PyObject *items[4];
    PyObject *transport = NULL;
    if (t1 - 8 == 3) {
        if (memcmp(s + 8, "UDP", 3) == 0)
            transport = s_udp;
        else if (memcmp(s + 8, "TCP", 3) == 0)
            transport = s_tcp;
        else if (memcmp(s + 8, "TLS", 3) == 0)
            transport = s_tls;
    }
    items[0] = transport ? Py_NewRef(transport) : sub(text, 8, t1);
    items[1] = sub(text, h0, h1);
    items[2] = port_object(port);
    items[3] = build_params(text, &p);
    return new_named(via_type, items, 4);
}

/* The methods a CSeq may name without a token check (grammar._METHODS). */
static const char *const METHODS[] = {
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
    "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
};
#define N_METHODS (sizeof(METHODS) / sizeof(METHODS[0]))
static PyObject *method_names[N_METHODS];

static PyObject *
parse_cseq(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n, i = 0;
    if (not_set_up())
        return NULL;
    const Py_UCS1 *s = nargs == 1 ? ascii_data(args[0], &n) : NULL;
    if (s == NULL)
        return fallback(cseq_general, args, nargs);
    /* grammar.parse_cseq: "digits SP METHOD", 1-9 digits, a method of _METHODS */
    long number = 0;
    while (i < n && DIGIT(s[i]) && i < 10) {
        number = number * 10 + (s[i] - '0');
        i++;
    }
    if (i == 0 || i >= 10 || i >= n || s[i] != ' ')
        return fallback(cseq_general, args, nargs);
    const Py_UCS1 *name = s + i + 1;
    Py_ssize_t len = n - i - 1;
    for (size_t k = 0; k < N_METHODS; k++) {
        if ((Py_ssize_t)strlen(METHODS[k]) == len && memcmp(name, METHODS[k], (size_t)len) == 0) {
            PyObject *items[2] = {PyLong_FromLong(number), Py_NewRef(method_names[k])};
            return new_named(cseq_type, items, 2);
        }
    }
    return fallback(cseq_general, args, nargs);
}

/* ------------------------------------------------------------------ */
/* scan: the fast framing scan of core.parse                           */

static PyObject *
decode(const char *s, Py_ssize_t n)
{
    return PyUnicode_DecodeUTF8(s, n, "surrogateescape");
}

/* Index of the first "\r\n" in s[from:to], or -1. */
static Py_ssize_t
find_crlf(const char *s, Py_ssize_t from, Py_ssize_t to)
{
    while (from < to) {
        const char *cr = memchr(s + from, '\r', (size_t)(to - from));
        if (cr == NULL)
            return -1;
        Py_ssize_t at = cr - s;
        if (at + 1 < to && s[at + 1] == '\n')
            return at;
        from = at + 1;
    }
    return -1;
}

static Py_ssize_t
find_blank(const char *s, Py_ssize_t n)
{
    Py_ssize_t from = 0;
    for (;;) {
        Py_ssize_t at = find_crlf(s, from, n);
        if (at < 0 || at + 3 >= n)
            return -1;
        if (s[at + 2] == '\r' && s[at + 3] == '\n')
            return at;
        from = at + 2;
    }
}

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(args[1])
            || !PyDict_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "scan(data: bytes, line_keys: dict, other_keys: dict)");
        return NULL;
    }
    const char *d = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *line_keys = args[1], *other_keys = args[2];
    Py_ssize_t head = find_blank(d, n);
    if (head < 0)
        Py_RETURN_NONE;
    /* Any bare LF in the head, a bare CR in the start line, an empty start
       line: the Python code decides. */
    Py_ssize_t end = find_crlf(d, 0, head);
    Py_ssize_t start_end = end < 0 ? head : end;
    if (start_end == 0 || memchr(d, '\r', (size_t)start_end) != NULL)
        Py_RETURN_NONE;
    for (const char *p = d; (p = memchr(p, '\n', (size_t)(d + head - p))) != NULL; p++) {
        if (p == d || p[-1] != '\r')
            Py_RETURN_NONE;
    }
    PyObject *first = PyDict_New();
    PyObject *name = NULL, *value = NULL, *text = NULL, *start = NULL, *body = NULL;
    int twice = 0, lines = 0;
    if (first == NULL)
        return NULL;
    Py_ssize_t a = start_end;
    while (a < head) {
        a += 2;  /* the CRLF before this line */
        Py_ssize_t b = find_crlf(d, a, head);
        if (b < 0)
            b = head;
        if (++lines > MAX_HEADERS)
            goto defer;
        const char *colon = memchr(d + a, ':', (size_t)(b - a));
        if (colon == NULL)
            goto defer;
        name = decode(d + a, colon - (d + a));
        if (name == NULL)
            goto error;
        PyObject *key = PyDict_GetItemWithError(line_keys, name);  /* borrowed */
        if (key == NULL) {
            if (PyErr_Occurred())
                goto error;
            key = PyDict_GetItemWithError(other_keys, name);
            if (key == NULL) {
                if (PyErr_Occurred())
                    goto error;
                goto defer;
            }
            if (memchr(d + a, '\r', (size_t)(b - a)) != NULL)
                goto defer;
        }
        Py_CLEAR(name);
        int has = PyDict_Contains(first, key);
        if (has < 0)
            goto error;
        if (!has) {
            value = decode(colon + 1, d + b - (colon + 1));
            if (value == NULL || PyDict_SetItem(first, key, value) < 0)
                goto error;
            Py_CLEAR(value);
        }
        else if (PyUnicode_Check(key)
                 && PyUnicode_CompareWithASCIIString(key, "content-length") == 0) {
            twice = 1;
        }
        a = b;
    }
    text = decode(d, head);
    start = decode(d, start_end);
    body = PyBytes_FromStringAndSize(d + head + 4, n - head - 4);
    if (text == NULL || start == NULL || body == NULL)
        goto error;
    PyObject *out = PyTuple_Pack(5, text, start, first, body, twice ? Py_True : Py_False);
    Py_DECREF(text);
    Py_DECREF(start);
    Py_DECREF(body);
    Py_DECREF(first);
    return out;
defer:
    Py_XDECREF(name);
    Py_DECREF(first);
    Py_RETURN_NONE;
error:
    Py_XDECREF(name);
    Py_XDECREF(value);
    Py_XDECREF(text);
    Py_XDECREF(start);
    Py_XDECREF(body);
    Py_DECREF(first);
    return NULL;
}

/* ------------------------------------------------------------------ */

static PyObject *
setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyType_Check(args[0]) || !PyType_Check(args[1])
            || !PyType_Check(args[2]) || !PyType_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "setup(URI, Address, Via, CSeq, uri_general, "
                        "address_general, via_general, cseq_general)");
        return NULL;
    }
    for (int k = 0; k < 4; k++) {
        PyTypeObject *t = (PyTypeObject *)args[k];
        if (!PyType_IsSubtype(t, &PyTuple_Type) || t->tp_basicsize != PyTuple_Type.tp_basicsize) {
            PyErr_SetString(PyExc_TypeError, "setup: the value types must be NamedTuples");
            return NULL;
        }
    }
    Py_XSETREF(uri_type, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(address_type, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(via_type, (PyTypeObject *)Py_NewRef(args[2]));
    Py_XSETREF(cseq_type, (PyTypeObject *)Py_NewRef(args[3]));
    Py_XSETREF(uri_general, Py_NewRef(args[4]));
    Py_XSETREF(address_general, Py_NewRef(args[5]));
    Py_XSETREF(via_general, Py_NewRef(args[6]));
    Py_XSETREF(cseq_general, Py_NewRef(args[7]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
     "setup(URI, Address, Via, CSeq, uri_general, address_general, via_general, "
     "cseq_general)"},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, line_keys, other_keys) -> (text, start, first, body, twice) | None"},
    {"parse_uri", (PyCFunction)(void (*)(void))parse_uri, METH_FASTCALL, "parse_uri(text) -> URI"},
    {"parse_address", (PyCFunction)(void (*)(void))parse_address, METH_FASTCALL,
     "parse_address(text, what='address') -> Address"},
    {"parse_via", (PyCFunction)(void (*)(void))parse_via, METH_FASTCALL, "parse_via(text) -> Via"},
    {"parse_cseq", (PyCFunction)(void (*)(void))parse_cseq, METH_FASTCALL,
     "parse_cseq(text) -> CSeq"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "engine.sip.message._speedups",
    "C quick paths for the SIP parser; see engine/sip/message/_speedups.c.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    init_classes();
    s_sip = PyUnicode_InternFromString("sip");
    s_sips = PyUnicode_InternFromString("sips");
    s_udp = PyUnicode_InternFromString("UDP");
    s_tcp = PyUnicode_InternFromString("TCP");
    s_tls = PyUnicode_InternFromString("TLS");
    s_empty = PyUnicode_InternFromString("");
    if (!s_sip || !s_sips || !s_udp || !s_tcp || !s_tls || !s_empty)
        return NULL;
    for (size_t k = 0; k < N_METHODS; k++) {
        method_names[k] = PyUnicode_InternFromString(METHODS[k]);
        if (method_names[k] == NULL)
            return NULL;
    }
    return PyModule_Create(&module_def);
}
