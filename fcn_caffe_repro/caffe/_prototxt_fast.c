/* The prototxt reader's fast path: the tree of prototxt._Parser, built in C.
 *
 * prototxt.py is the specification. parse() builds exactly the tree _Parser builds (Message objects
 * with their slots set as _parsed sets them, keys and enum values held once, strings as _unquote
 * gives them; a recent string, number or (key, value) tuple repeated is one object, as _Parser
 * holds recent strings once: all are immutable), or returns None: on a syntax error, on anything
 * it does not handle the same way (a character outside ASCII where the grammar expects a token, a
 * lone surrogate in a string, an integer too long for int()), and on any failure of the C API.
 * loads() then parses with the Python parser, which raises the exact error. Only an exception
 * raised by a signal handler propagates. Iterative: an explicit stack of open messages, max_depth
 * deep at most. Plain C, no torch. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define END_CH ((Py_UCS4)0x110000) /* past the end of the text: no character has this value */
#define STRING_SLOTS 4096          /* the cache of recent string values (_Parser's `strings` window) */
#define HOLD_MAX 256               /* longer values are not cached: rarely repeated, long to hash */
#define SIGNAL_EVERY 65536         /* fields between checks for a pending signal (Ctrl-C) */
#define RECENT 1024                /* slots of the caches of recent numbers and (key, value) pairs */
#define NUMBER_CHARS 24            /* longer number tokens are not cached */

/* --- a hash table of Python objects by their characters --------------------------------- */
typedef struct {
    PyObject *key;   /* a str, the characters compared */
    PyObject *value; /* what the characters stand for (the key itself, or an Enum) */
    uint64_t hash;
} Entry;

typedef struct {
    Entry *slots;
    size_t cap, count; /* cap a power of two, at most half full */
} Table;

static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = (const unsigned char *)p;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

static void table_free(Table *t) {
    for (size_t i = 0; i < t->cap; i++) {
        Py_XDECREF(t->slots[i].key);
        Py_XDECREF(t->slots[i].value);
    }
    PyMem_Free(t->slots);
    t->slots = NULL;
    t->cap = t->count = 0;
}

static int table_init(Table *t, size_t cap) {
    t->slots = PyMem_Calloc(cap, sizeof(Entry));
    t->cap = t->slots != NULL ? cap : 0;
    t->count = 0;
    return t->slots != NULL ? 0 : -1;
}

/* The slot of the entry whose key has these characters (kind: bytes per character), or the empty
 * slot where it goes. A key of another kind is another key: the cached str's characters are
 * compared as stored. */
static Entry *table_find(Table *t, const void *chars, Py_ssize_t len, int kind, uint64_t hash) {
    size_t mask = t->cap - 1, i = (size_t)hash & mask;
    for (;;) {
        Entry *e = &t->slots[i];
        if (e->key == NULL) return e;
        if (e->hash == hash && PyUnicode_GET_LENGTH(e->key) == len && PyUnicode_KIND(e->key) == kind &&
            memcmp(PyUnicode_DATA(e->key), chars, (size_t)len * (size_t)kind) == 0)
            return e;
        i = (i + 1) & mask;
    }
}

/* Add key -> value (new references taken) at the empty slot e; grows at half full. */
static int table_put(Table *t, Entry *e, PyObject *key, PyObject *value, uint64_t hash) {
    Py_INCREF(key);
    Py_INCREF(value);
    e->key = key;
    e->value = value;
    e->hash = hash;
    if (++t->count * 2 <= t->cap) return 0;
    size_t old_cap = t->cap;
    Entry *old = t->slots;
    Entry *slots = PyMem_Calloc(old_cap * 2, sizeof(Entry));
    if (slots == NULL) { /* the table stays valid, over half full */
        PyErr_NoMemory();
        return -1;
    }
    t->slots = slots;
    t->cap = old_cap * 2;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].key == NULL) continue;
        size_t j = (size_t)old[i].hash & (t->cap - 1);
        while (slots[j].key != NULL) j = (j + 1) & (t->cap - 1);
        slots[j] = old[i];
    }
    PyMem_Free(old);
    return 0;
}

/* --- the parser's state ----------------------------------------------------------------- */
enum { S_FIELDS, S_FILE, S_LINE, S_COL, S_POS, S_SRC, S_OFF, N_SLOTS };
static const char *const SLOT_NAMES[N_SLOTS] = {"fields", "file", "_line", "_col", "_pos", "_src", "_off"};

typedef struct {
    PyObject *msg;      /* the open message (a borrowed reference: its parent's field, or the root) */
    Py_UCS4 close;      /* '}' or '>', or 0 for the root */
    Py_ssize_t start;   /* where its fields begin on the pending stack */
} Frame;

/* A recent string value: a repeated one (type: "ReLU") is one object. */
typedef struct {
    uint64_t hash;
    PyObject *value;
} StringSlot;

/* A number token and its value: a repeated number (0.1, 0.01, 2) is one object, as an enum is. */
typedef struct {
    char chars[NUMBER_CHARS];
    Py_ssize_t len;
    PyObject *value;
} NumberSlot;

/* A recent (key, value) tuple, with its items' addresses at hand. */
typedef struct {
    PyObject *key, *value, *pair;
} PairSlot;

typedef struct {
    PyObject *text;
    int kind;
    const void *data;
    Py_ssize_t n;
    PyObject *src, *file;
    PyTypeObject *msg_type;
    PyObject *enum_type;
    Py_ssize_t slot[N_SLOTS]; /* byte offsets of Message's __slots__ in the object */
    Table keys, enums;
    StringSlot *strings;      /* STRING_SLOTS slots, by the hash of the characters */
    NumberSlot *numbers;      /* RECENT slots, by the hash of the token */
    PairSlot *pairs;          /* RECENT (key, value) tuples, by the identity of key and value: a field
                                 repeated with the same objects (type: "ReLU") is one tuple, immutable */
    PyObject **pending;       /* (key, value) tuples of the open messages, innermost last */
    Py_ssize_t npending, cap_pending;
    char *buf;                /* scratch: a token's ASCII characters, an escaped string's bytes */
    Py_ssize_t cap_buf;
    int interrupted;          /* a signal handler raised: propagate, do not fall back */
    long signal_budget;
} Parser;

static inline Py_UCS4 at(const Parser *p, Py_ssize_t i) {
    return i < p->n ? PyUnicode_READ(p->kind, p->data, i) : END_CH;
}

static inline int is_digit(Py_UCS4 c) { return c >= '0' && c <= '9'; }
static inline int is_hex(Py_UCS4 c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
static inline int is_ident_start(Py_UCS4 c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static inline int is_word(Py_UCS4 c) { return is_ident_start(c) || is_digit(c); }
static inline int is_octal(Py_UCS4 c) { return c >= '0' && c <= '7'; }

/* _SKIP: whitespace and # comments (to the end of the line, the newline not included). */
static Py_ssize_t skip(const Parser *p, Py_ssize_t i) {
    for (;;) {
        Py_UCS4 c = at(p, i);
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v') {
            i++;
        } else if (c == '#') {
            while (i < p->n && at(p, i) != '\n') i++;
        } else {
            return i;
        }
    }
}

static int reserve_buf(Parser *p, Py_ssize_t need) {
    if (need <= p->cap_buf) return 0;
    Py_ssize_t cap = p->cap_buf > 0 ? p->cap_buf : 64;
    while (cap < need) {
        if (cap > PY_SSIZE_T_MAX / 2) return -1;
        cap *= 2;
    }
    char *buf = PyMem_Realloc(p->buf, (size_t)cap);
    if (buf == NULL) return -1;
    p->buf = buf;
    p->cap_buf = cap;
    return 0;
}

/* The ASCII characters [a, b) into the scratch buffer, NUL-terminated. */
static int ascii_to_buf(Parser *p, Py_ssize_t a, Py_ssize_t b) {
    if (reserve_buf(p, b - a + 1) < 0) return -1;
    for (Py_ssize_t i = a; i < b; i++) p->buf[i - a] = (char)at(p, i);
    p->buf[b - a] = '\0';
    return 0;
}

/* A new message as _parsed makes it: fields unset until it closes. */
static PyObject *new_message(Parser *p, Py_ssize_t off) {
    PyObject *off_obj = PyLong_FromSsize_t(off);
    if (off_obj == NULL) return NULL;
    PyObject *m = p->msg_type->tp_alloc(p->msg_type, 0);
    if (m == NULL) {
        Py_DECREF(off_obj);
        return NULL;
    }
    char *base = (char *)m;
    PyObject *values[N_SLOTS] = {NULL, p->file, Py_None, Py_None, Py_None, p->src, off_obj};
    for (int s = 1; s < N_SLOTS; s++) {
        if (s != S_OFF) Py_INCREF(values[s]);
        *(PyObject **)(base + p->slot[s]) = values[s];
    }
    return m;
}

/* Add (key, value) to the open message's fields; `share`: the tuple may be one used before. */
static int push_field(Parser *p, PyObject *key, PyObject *value, int share) {
    if (p->npending == p->cap_pending) {
        Py_ssize_t cap = p->cap_pending > 0 ? p->cap_pending * 2 : 256;
        PyObject **pending = PyMem_Realloc(p->pending, (size_t)cap * sizeof(PyObject *));
        if (pending == NULL) return -1;
        p->pending = pending;
        p->cap_pending = cap;
    }
    PyObject *pair;
    PairSlot *slot = NULL;
    if (share) {
        uint64_t h = ((uint64_t)(uintptr_t)key >> 4) * 0x9E3779B97F4A7C15ULL ^
                     ((uint64_t)(uintptr_t)value >> 4) * 0xC2B2AE3D27D4EB4FULL;
        slot = &p->pairs[(h >> 32) & (RECENT - 1)];
        /* The cached tuple holds key and value: while it is here, no other object has their addresses. */
        if (slot->pair != NULL && slot->key == key && slot->value == value) {
            Py_INCREF(slot->pair);
            p->pending[p->npending++] = slot->pair;
            return 0;
        }
    }
    pair = PyTuple_Pack(2, key, value);
    if (pair == NULL) return -1;
    if (slot != NULL) {
        Py_INCREF(pair);
        Py_XSETREF(slot->pair, pair);
        slot->key = key;
        slot->value = value;
    }
    p->pending[p->npending++] = pair;
    if (--p->signal_budget <= 0) {
        p->signal_budget = SIGNAL_EVERY;
        if (PyErr_CheckSignals() < 0) {
            p->interrupted = 1;
            return -1;
        }
    }
    return 0;
}

/* The message's fields: the pending tuples from `start` on, in a list of exactly their number. */
static int close_message(Parser *p, PyObject *msg, Py_ssize_t start) {
    Py_ssize_t n = p->npending - start;
    PyObject *list = PyList_New(n);
    if (list == NULL) return -1;
    for (Py_ssize_t i = 0; i < n; i++) PyList_SET_ITEM(list, i, p->pending[start + i]);
    p->npending = start;
    PyObject **slot = (PyObject **)((char *)msg + p->slot[S_FIELDS]);
    Py_XSETREF(*slot, list);
    return 0;
}

/* A field name, or an enum value's characters, held once: a borrowed reference from the table. */
static PyObject *intern_ident(Parser *p, Table *t, Py_ssize_t a, Py_ssize_t b, int as_enum) {
    if (ascii_to_buf(p, a, b) < 0) return NULL;
    uint64_t h = hash_bytes(p->buf, (size_t)(b - a));
    Entry *e = table_find(t, p->buf, b - a, PyUnicode_1BYTE_KIND, h);
    if (e->key != NULL) return e->value;
    PyObject *key = PyUnicode_FromStringAndSize(p->buf, b - a);
    if (key == NULL) return NULL;
    PyObject *value = as_enum ? PyObject_CallOneArg(p->enum_type, key) : (Py_INCREF(key), key);
    if (value == NULL || table_put(t, e, key, value, h) < 0) {
        Py_DECREF(key);
        Py_XDECREF(value);
        return NULL;
    }
    Py_DECREF(key);
    Py_DECREF(value);
    return value; /* the table holds it; not e->value: growing the table freed the slot e */
}

/* _STRING from the quote at i: the index after the closing quote, or -1 (no valid string here);
 * *escaped says whether the body has a backslash. */
static Py_ssize_t scan_string(const Parser *p, Py_ssize_t i, int *escaped) {
    Py_UCS4 q = at(p, i);
    *escaped = 0;
    for (Py_ssize_t k = i + 1;;) {
        Py_UCS4 c = at(p, k);
        if (c == END_CH || c == '\n') return -1;
        if (c == q) return k + 1;
        if (c == '\\') {
            Py_UCS4 d = at(p, k + 1);
            if (d == END_CH || d == '\n') return -1;
            *escaped = 1;
            k += 2;
        } else {
            k++;
        }
    }
}

static int put_byte(Parser *p, Py_ssize_t *len, unsigned char b) {
    if (reserve_buf(p, *len + 1) < 0) return -1;
    p->buf[(*len)++] = (char)b;
    return 0;
}

/* _unquote of the string [i, end) with escapes: literal characters give their UTF-8, escapes raw
 * bytes; the bytes decode as UTF-8, else as latin-1. NULL with no exception: not handled here. */
static PyObject *unquote_escaped(Parser *p, Py_ssize_t i, Py_ssize_t end) {
    Py_ssize_t len = 0, k = i + 1, stop = end - 1;
    while (k < stop) {
        Py_UCS4 c = at(p, k);
        if (c != '\\') {
            unsigned char u[4];
            int nu;
            if (c < 0x80) { u[0] = (unsigned char)c; nu = 1; }
            else if (c < 0x800) {
                u[0] = (unsigned char)(0xC0 | (c >> 6)); u[1] = (unsigned char)(0x80 | (c & 0x3F)); nu = 2;
            }
            else if (c >= 0xD800 && c <= 0xDFFF) return NULL; /* str.encode raises: leave it to Python */
            else if (c < 0x10000) {
                u[0] = (unsigned char)(0xE0 | (c >> 12)); u[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
                u[2] = (unsigned char)(0x80 | (c & 0x3F)); nu = 3;
            } else {
                u[0] = (unsigned char)(0xF0 | (c >> 18)); u[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
                u[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F)); u[3] = (unsigned char)(0x80 | (c & 0x3F)); nu = 4;
            }
            for (int j = 0; j < nu; j++)
                if (put_byte(p, &len, u[j]) < 0) return NULL;
            k++;
            continue;
        }
        Py_UCS4 e = at(p, k + 1); /* scan_string saw to it that one follows */
        int byte;
        switch (e) {
            case 'n': byte = '\n'; break;
            case 't': byte = '\t'; break;
            case 'r': byte = '\r'; break;
            case 'a': byte = '\a'; break;
            case 'b': byte = '\b'; break;
            case 'f': byte = '\f'; break;
            case 'v': byte = '\v'; break;
            case '\\': case '\'': case '"': case '?': byte = (int)e; break;
            default: byte = -1;
        }
        if (byte >= 0) {
            k += 2;
        } else if (e == 'x' || e == 'X') {
            Py_ssize_t d = k + 2;
            int v = 0;
            while (d < stop && d < k + 4 && is_hex(at(p, d))) {
                Py_UCS4 h = at(p, d++);
                v = v * 16 + (int)(is_digit(h) ? h - '0' : (h | 0x20) - 'a' + 10);
            }
            if (d == k + 2) return NULL; /* \x without a digit: an error */
            byte = v;
            k = d;
        } else if (is_octal(e)) {
            Py_ssize_t d = k + 1;
            int v = 0;
            while (d < stop && d < k + 4 && is_octal(at(p, d))) v = v * 8 + (int)(at(p, d++) - '0');
            byte = v & 0xFF;
            k = d;
        } else {
            return NULL; /* unknown escape: an error */
        }
        if (put_byte(p, &len, (unsigned char)byte) < 0) return NULL;
    }
    PyObject *s = PyUnicode_DecodeUTF8(p->buf != NULL ? p->buf : "", len, NULL);
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        s = PyUnicode_DecodeLatin1(p->buf != NULL ? p->buf : "", len, NULL);
    }
    return s;
}

/* The value of one string [i, end): its body, or _unquote's result. `hold`: through the cache of
 * recent values (a scalar field's single string, as _Parser's `strings`). */
static PyObject *string_value(Parser *p, Py_ssize_t i, Py_ssize_t end, int escaped, int hold) {
    if (escaped) return unquote_escaped(p, i, end);
    Py_ssize_t a = i + 1, len = end - 1 - a;
    if (!hold || len > HOLD_MAX) return PyUnicode_Substring(p->text, a, a + len);
    const char *chars = (const char *)p->data + a * p->kind;
    uint64_t h = hash_bytes(chars, (size_t)len * (size_t)p->kind);
    StringSlot *slot = &p->strings[(h >> 32) & (STRING_SLOTS - 1)];
    PyObject *s = slot->value;
    /* A value of another kind (an ASCII value in a wider text) is another value: a miss. */
    if (s != NULL && slot->hash == h && PyUnicode_GET_LENGTH(s) == len && PyUnicode_KIND(s) == p->kind &&
        memcmp(PyUnicode_DATA(s), chars, (size_t)len * (size_t)p->kind) == 0) {
        Py_INCREF(s);
        return s;
    }
    s = PyUnicode_Substring(p->text, a, a + len);
    if (s == NULL) return NULL;
    Py_INCREF(s);
    Py_XSETREF(slot->value, s);
    slot->hash = h;
    return s;
}

/* A string value from the quote at i and every string that follows it (adjacent strings
 * concatenate); *end after the last. */
static PyObject *strings_value(Parser *p, Py_ssize_t i, Py_ssize_t *end, int hold) {
    int escaped;
    Py_ssize_t e = scan_string(p, i, &escaped);
    if (e < 0) return NULL;
    Py_ssize_t k = skip(p, e);
    Py_UCS4 c = at(p, k);
    int more = c == '"' || c == '\'';
    PyObject *value = string_value(p, i, e, escaped, hold && !more);
    while (value != NULL && more) {
        Py_ssize_t e2 = scan_string(p, k, &escaped);
        if (e2 < 0) { /* a quote that opens no string: an error whatever comes before */
            Py_DECREF(value);
            return NULL;
        }
        PyObject *piece = string_value(p, k, e2, escaped, 0);
        if (piece == NULL) {
            Py_DECREF(value);
            return NULL;
        }
        PyUnicode_Append(&value, piece);
        Py_DECREF(piece);
        e = e2;
        k = skip(p, e);
        c = at(p, k);
        more = c == '"' || c == '\'';
    }
    *end = e;
    return value;
}

static PyObject *number_from_buf(const char *buf, int hex, int integral);

/* _NUMBER from i and _number's value. The longest match must not be followed by a word character
 * (the shorter matches the regex could fall back on all end in an error) nor by a character
 * outside ASCII (\d matches other digits). */
static PyObject *number_value(Parser *p, Py_ssize_t i, Py_ssize_t *end) {
    Py_ssize_t k = i;
    int hex = 0, integral = 1;
    if (at(p, k) == '-' || at(p, k) == '+') k++;
    if (at(p, k) == '0' && (at(p, k + 1) == 'x' || at(p, k + 1) == 'X') && is_hex(at(p, k + 2))) {
        hex = 1;
        k += 2;
        while (is_hex(at(p, k))) k++;
    } else {
        while (is_digit(at(p, k))) k++;
        if (at(p, k) == '.') {
            integral = 0;
            k++;
            while (is_digit(at(p, k))) k++;
        }
        Py_UCS4 e = at(p, k);
        if ((e == 'e' || e == 'E') &&
            (is_digit(at(p, k + 1)) || ((at(p, k + 1) == '-' || at(p, k + 1) == '+') && is_digit(at(p, k + 2))))) {
            integral = 0;
            k += 2;
            while (is_digit(at(p, k))) k++;
        }
    }
    Py_ssize_t stop = k; /* the token without its f suffix */
    if (!hex && (at(p, k) == 'f' || at(p, k) == 'F')) k++;
    Py_UCS4 next = at(p, k);
    if (is_word(next) || (next >= 0x80 && next != END_CH)) return NULL;
    *end = k;
    if (ascii_to_buf(p, i, stop) < 0) return NULL;
    NumberSlot *slot = NULL;
    if (stop - i < NUMBER_CHARS) {
        slot = &p->numbers[(hash_bytes(p->buf, (size_t)(stop - i)) >> 32) & (RECENT - 1)];
        if (slot->value != NULL && slot->len == stop - i && memcmp(slot->chars, p->buf, (size_t)(stop - i)) == 0) {
            Py_INCREF(slot->value);
            return slot->value;
        }
    }
    PyObject *value = number_from_buf(p->buf, hex, integral);
    if (value != NULL && slot != NULL) {
        memcpy(slot->chars, p->buf, (size_t)(stop - i));
        slot->len = stop - i;
        Py_INCREF(value);
        Py_XSETREF(slot->value, value);
    }
    return value;
}

/* _number's value of the ASCII token in buf (no f suffix): hex int, int, or float. */
static PyObject *number_from_buf(const char *buf, int hex, int integral) {
    if (hex) return PyLong_FromString(buf, NULL, 16);
    if (integral) {
        const char *s = buf;
        int neg = *s == '-';
        if (*s == '-' || *s == '+') s++;
        size_t nd = strlen(s);
        if (nd > 18) return PyLong_FromString(buf, NULL, 10); /* int()'s digit limit applies */
        long long v = 0;
        for (; *s; s++) v = v * 10 + (*s - '0');
        return PyLong_FromLongLong(neg ? -v : v);
    }
    char *endp;
    double d = PyOS_string_to_double(buf, &endp, NULL);
    if ((d == -1.0 && PyErr_Occurred()) || *endp != '\0') return NULL;
    return PyFloat_FromDouble(d);
}

/* _ident: inf/nan forms (a sign allowed) are floats, other identifiers enums held once; a sign
 * before anything else is an error. [i, b) is the token. */
static PyObject *ident_value(Parser *p, Py_ssize_t i, Py_ssize_t b) {
    Py_UCS4 c = at(p, i);
    int signed_ = c == '-' || c == '+';
    if (ascii_to_buf(p, c == '+' ? i + 1 : i, b) < 0) return NULL;
    char *s = p->buf;
    for (char *t = s; *t; t++)
        if (*t >= 'A' && *t <= 'Z') *t = (char)(*t - 'A' + 'a');
    const char *u = *s == '-' ? s + 1 : s;
    if (strcmp(u, "inf") == 0 || strcmp(u, "infinity") == 0 || strcmp(u, "nan") == 0) {
        char *endp;
        double d = PyOS_string_to_double(s, &endp, NULL);
        if ((d == -1.0 && PyErr_Occurred()) || *endp != '\0') return NULL;
        return PyFloat_FromDouble(d);
    }
    if (signed_) return NULL;
    PyObject *e = intern_ident(p, &p->enums, i, b, 1);
    Py_XINCREF(e);
    return e;
}

/* A scalar value at i (_VALUE): string(s), number or identifier; *end after it. */
static PyObject *scalar_value(Parser *p, Py_ssize_t i, Py_ssize_t *end, int hold) {
    Py_UCS4 c = at(p, i);
    if (c == '"' || c == '\'') return strings_value(p, i, end, hold);
    Py_ssize_t k = (c == '-' || c == '+') ? i + 1 : i;
    Py_UCS4 d = at(p, k);
    if (is_digit(d) || (d == '.' && is_digit(at(p, k + 1)))) return number_value(p, i, end);
    if (is_ident_start(d)) {
        Py_ssize_t b = k + 1;
        while (is_word(at(p, b))) b++;
        *end = b;
        return ident_value(p, i, b);
    }
    return NULL;
}

/* After a value, a list or a closing bracket: one optional ; or , separator. */
static Py_ssize_t after_separator(const Parser *p, Py_ssize_t i) {
    Py_ssize_t k = skip(p, i);
    Py_UCS4 c = at(p, k);
    return (c == ';' || c == ',') ? k + 1 : i;
}

/* `key: [v1, v2, ...]` from after the [: each value a field; the index after the ], or -1. */
static Py_ssize_t parse_list(Parser *p, PyObject *key, Py_ssize_t i) {
    for (int first = 1;; first = 0) {
        Py_ssize_t k = skip(p, i);
        Py_UCS4 c = at(p, k);
        if (c == ']') return k + 1;
        if (!first) {
            if (c != ',') return -1;
            i = k + 1;
        }
        Py_ssize_t end;
        PyObject *value = scalar_value(p, skip(p, i), &end, 0);
        if (value == NULL) return -1;
        int rc = push_field(p, key, value, 1);
        Py_DECREF(value);
        if (rc < 0) return -1;
        i = end;
    }
}

/* The whole text as _Parser.parse(): the root message (a new reference) or NULL. */
static PyObject *parse_text(Parser *p, int max_depth) {
    PyObject *root = new_message(p, -1);
    if (root == NULL) return NULL;
    Frame *frames = PyMem_Calloc((size_t)max_depth + 1, sizeof(Frame));
    if (frames == NULL) {
        Py_DECREF(root);
        return NULL;
    }
    int depth = 0;
    frames[0].msg = root;
    frames[0].close = 0;
    frames[0].start = 0;
    Py_ssize_t pos = 0;
    for (;;) {
        Py_ssize_t i = skip(p, pos);
        Py_UCS4 c = at(p, i);
        if (is_ident_start(c)) {
            Py_ssize_t b = i + 1;
            while (is_word(at(p, b))) b++;
            PyObject *key = intern_ident(p, &p->keys, i, b, 0);
            if (key == NULL) break;
            Py_ssize_t j = skip(p, b);
            int colon = at(p, j) == ':';
            if (colon) j = skip(p, j + 1);
            Py_UCS4 v = at(p, j);
            if (v == '{' || v == '<') {
                if (depth >= max_depth) break;
                PyObject *child = new_message(p, i);
                if (child == NULL) break;
                int rc = push_field(p, key, child, 0);
                Py_DECREF(child); /* its pending tuple holds it */
                if (rc < 0) break;
                depth++;
                frames[depth].msg = child;
                frames[depth].close = v == '{' ? '}' : '>';
                frames[depth].start = p->npending;
                pos = j + 1;
                continue;
            }
            if (!colon) break;
            if (v == '[') {
                Py_ssize_t e = parse_list(p, key, j + 1);
                if (e < 0) break;
                pos = after_separator(p, e);
                continue;
            }
            Py_ssize_t end;
            PyObject *value = scalar_value(p, j, &end, 1);
            if (value == NULL) break;
            int rc = push_field(p, key, value, 1);
            Py_DECREF(value);
            if (rc < 0) break;
            pos = after_separator(p, end);
            continue;
        }
        if (c == '}' || c == '>') {
            if (depth == 0 || c != frames[depth].close) break;
            if (close_message(p, frames[depth].msg, frames[depth].start) < 0) break;
            depth--;
            pos = after_separator(p, i + 1);
            continue;
        }
        if (c == END_CH && depth == 0) {
            if (close_message(p, root, 0) < 0) break;
            PyMem_Free(frames);
            return root;
        }
        break; /* anything else: an error */
    }
    PyMem_Free(frames);
    Py_DECREF(root);
    return NULL;
}

/* The byte offset of slot `name` in Message objects: a writable object slot, else -1. */
static Py_ssize_t slot_offset(PyTypeObject *type, const char *name) {
    PyObject *d = PyObject_GetAttrString((PyObject *)type, name);
    if (d == NULL) return -1;
    Py_ssize_t off = -1;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY) && m->offset > 0 &&
            m->offset + (Py_ssize_t)sizeof(PyObject *) <= type->tp_basicsize)
            off = m->offset;
    }
    Py_DECREF(d);
    return off;
}

PyDoc_STRVAR(parse_doc,
"parse(text, src, file, Message, Enum, max_depth) -> Message or None\n\n"
"The tree prototxt._Parser(src).parse() builds from text, or None where that parser must decide\n"
"(an error, or anything this one does not handle the same way).");

static PyObject *parse(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *text, *src, *file, *msg_type, *enum_type;
    int max_depth;
    if (!PyArg_ParseTuple(args, "UOOO!Oi:parse", &text, &src, &file, &PyType_Type, &msg_type, &enum_type, &max_depth))
        return NULL;
    Parser p;
    memset(&p, 0, sizeof p);
    p.text = text;
    p.kind = PyUnicode_KIND(text);
    p.data = PyUnicode_DATA(text);
    p.n = PyUnicode_GET_LENGTH(text);
    p.src = src;
    p.file = file;
    p.msg_type = (PyTypeObject *)msg_type;
    p.enum_type = enum_type;
    p.signal_budget = SIGNAL_EVERY;
    PyObject *root = NULL;
    int ok = max_depth >= 0 && max_depth < (1 << 20);
    for (int s = 0; ok && s < N_SLOTS; s++) ok = (p.slot[s] = slot_offset(p.msg_type, SLOT_NAMES[s])) > 0;
    if (ok && table_init(&p.keys, 64) == 0 && table_init(&p.enums, 64) == 0 &&
        (p.strings = PyMem_Calloc(STRING_SLOTS, sizeof(StringSlot))) != NULL &&
        (p.numbers = PyMem_Calloc(RECENT, sizeof(NumberSlot))) != NULL &&
        (p.pairs = PyMem_Calloc(RECENT, sizeof(PairSlot))) != NULL)
        root = parse_text(&p, max_depth);
    for (Py_ssize_t i = 0; i < p.npending; i++) Py_DECREF(p.pending[i]);
    PyMem_Free(p.pending);
    PyMem_Free(p.buf);
    table_free(&p.keys);
    table_free(&p.enums);
    for (int i = 0; p.strings != NULL && i < STRING_SLOTS; i++) Py_XDECREF(p.strings[i].value);
    PyMem_Free(p.strings);
    for (int i = 0; p.numbers != NULL && i < RECENT; i++) Py_XDECREF(p.numbers[i].value);
    for (int i = 0; p.pairs != NULL && i < RECENT; i++) Py_XDECREF(p.pairs[i].pair);
    PyMem_Free(p.numbers);
    PyMem_Free(p.pairs);
    if (root != NULL) return root;
    if (p.interrupted) return NULL;
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS, parse_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_prototxt_fast",
    "The prototxt reader's fast path in C (prototxt.py is the specification; loads uses both).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__prototxt_fast(void) { return PyModule_Create(&module); }
