/*
 * vsm_bridge.c -- reference codec of the vsm-edge firmware bridge. See vsm_bridge.h.
 *
 * The decoder accepts exactly what the Python bridge accepts (the shared test
 * vectors and a differential fuzz test hold both to it): CBOR without tags or
 * indefinite lengths, map keys in ascending order, every field typed and in range.
 */
#include "vsm_bridge.h"

#include <string.h>

/* ---- CRC-16/IBM-3740, four bits at a time (a 32-byte table) ------------------ */

static const uint16_t crc_nibble[16] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7,
    0x8108, 0x9129, 0xa14a, 0xb16b, 0xc18c, 0xd1ad, 0xe1ce, 0xf1ef,
};

uint16_t vb_crc16(uint16_t crc, const uint8_t *data, size_t len) {
    while (len--) {
        uint8_t b = *data++;
        crc = (uint16_t)((crc << 4) ^ crc_nibble[(crc >> 12) ^ (b >> 4)]);
        crc = (uint16_t)((crc << 4) ^ crc_nibble[(crc >> 12) ^ (b & 0x0F)]);
    }
    return crc;
}

/* ---- COBS ---------------------------------------------------------------------- */

/* Encode len bytes from src into dst. dst may be src - k for k >= 1 + len / 254
 * (in place, as vb_frame_encode does) or a separate buffer. A final run of
 * exactly 254 non-zero bytes gets no trailing 0x01 code (as in the paper). */
static size_t cobs_encode_raw(const uint8_t *src, size_t len, uint8_t *dst) {
    size_t w = 1, code_pos = 0, i;
    uint8_t code = 1;
    int open = 1;
    for (i = 0; i < len; i++) {
        uint8_t b = src[i];
        if (b == 0) {
            dst[code_pos] = code;
            code_pos = w++;
            code = 1;
        } else {
            dst[w++] = b;
            if (++code == 0xFF) {
                dst[code_pos] = 0xFF;
                if (i + 1 < len) {
                    code_pos = w++;
                    code = 1;
                } else {
                    open = 0;
                }
            }
        }
    }
    if (open) dst[code_pos] = code;
    return w;
}

int vb_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
    if (cap < len + 1 + len / 254) return VB_ERR_SPACE;
    return (int)cobs_encode_raw(in, len, out);
}

int vb_unframe(uint8_t *buf, size_t len, size_t max_frame, size_t *payload_len) {
    size_t r = 0, w = 0, i;
    uint16_t crc;
    if (len > max_frame) return VB_ERR_LONG;
    for (i = 0; i < len; i++)
        if (buf[i] == 0) return VB_ERR_COBS;
    while (r < len) {
        uint8_t code = buf[r];
        size_t end = r + code;
        if (end > len) return VB_ERR_COBS;
        r++;
        while (r < end) buf[w++] = buf[r++];
        if (code != 0xFF && r < len) buf[w++] = 0;
    }
    if (w < 3) return VB_ERR_SHORT;
    crc = vb_crc16(0xFFFF, buf, w - 2);
    if (buf[w - 2] != (uint8_t)(crc >> 8) || buf[w - 1] != (uint8_t)crc) return VB_ERR_CRC;
    *payload_len = w - 2;
    return VB_OK;
}

/* ---- CBOR reader ---------------------------------------------------------------- */

enum { K_UINT, K_NINT, K_BYTES, K_TEXT, K_ARRAY, K_MAP, K_FALSE, K_TRUE, K_NULL, K_FLOAT };

typedef struct {
    const uint8_t *p, *end;
} rd;

typedef struct {
    uint8_t kind;
    uint64_t u;      /* K_UINT value, K_NINT: value is -1 - u, lengths/counts */
    double f;        /* K_FLOAT */
    const uint8_t *s; /* K_BYTES, K_TEXT */
} item;

static uint64_t be(const uint8_t *p, int n) {
    uint64_t v = 0;
    while (n--) v = (v << 8) | *p++;
    return v;
}

static double half_to_double(uint16_t h, int *finite) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
    float f;
    *finite = exp != 0x1F;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal half: normalise into a float32 */
            int32_t e = -14;
            while (!(mant & 0x400)) {
                mant <<= 1;
                e--;
            }
            bits = sign | ((uint32_t)(e + 127) << 23) | ((mant & 0x3FF) << 13);
        }
    } else {
        bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    memcpy(&f, &bits, 4);
    return (double)f;
}

static int rd_item(rd *r, item *it) {
    uint8_t ib, major, ai;
    uint64_t arg;
    int n;
    if (r->p >= r->end) return VB_ERR_CBOR;
    ib = *r->p++;
    major = ib >> 5;
    ai = ib & 0x1F;
    if (ai < 24) {
        arg = ai;
        n = 0;
    } else if (ai <= 27) {
        n = 1 << (ai - 24);
        if ((size_t)(r->end - r->p) < (size_t)n) return VB_ERR_CBOR;
        arg = be(r->p, n);
    } else {
        return VB_ERR_CBOR; /* reserved, or indefinite length */
    }
    if (major == 7) {
        int finite = 1;
        if (n == 0 && ai == 20) it->kind = K_FALSE;
        else if (n == 0 && ai == 21) it->kind = K_TRUE;
        else if (n == 0 && ai == 22) it->kind = K_NULL;
        else if (ai == 25) {
            it->kind = K_FLOAT;
            it->f = half_to_double((uint16_t)arg, &finite);
        } else if (ai == 26) {
            uint32_t bits = (uint32_t)arg;
            float f;
            memcpy(&f, &bits, 4);
            it->kind = K_FLOAT;
            it->f = (double)f;
            finite = ((bits >> 23) & 0xFF) != 0xFF;
        } else if (ai == 27) {
            double d;
            if (sizeof(double) != 8) return VB_ERR_CBOR; /* AVR: no 64-bit double */
            memcpy(&d, &arg, 8);
            it->kind = K_FLOAT;
            it->f = d;
            finite = ((arg >> 52) & 0x7FF) != 0x7FF;
        } else {
            return VB_ERR_CBOR; /* undefined, other simple values */
        }
        r->p += n;
        it->u = (uint64_t)!finite; /* for floats: 1 when not finite */
        return VB_OK;
    }
    r->p += n;
    it->u = arg;
    switch (major) {
    case 0: it->kind = K_UINT; return VB_OK;
    case 1: it->kind = K_NINT; return VB_OK;
    case 2:
    case 3:
        if (arg > (uint64_t)(r->end - r->p)) return VB_ERR_CBOR;
        it->kind = major == 2 ? K_BYTES : K_TEXT;
        it->s = r->p;
        r->p += arg;
        return VB_OK;
    case 4:
    case 5:
        if (arg > (uint64_t)(r->end - r->p)) return VB_ERR_CBOR;
        it->kind = major == 4 ? K_ARRAY : K_MAP;
        return VB_OK;
    default:
        return VB_ERR_CBOR; /* tags */
    }
}

/* Strict UTF-8 (Unicode table 3-7): no overlongs, no surrogates, <= U+10FFFF. */
static int utf8_ok(const uint8_t *s, uint64_t len) {
    uint64_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        int n;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) n = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else return 0;
        if (len - i - 1 < (uint64_t)n) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int k = 2; k <= n; k++)
            if (s[i + (uint64_t)k] < 0x80 || s[i + (uint64_t)k] > 0xBF) return 0;
        i += (uint64_t)n + 1;
    }
    return 1;
}

enum { T_NAME, T_TEXT, T_TEXT_EMPTY };

/* A text item: UTF-8 checked; T_NAME: 1..max of [A-Za-z0-9._-]; T_TEXT: 1..max,
 * no control characters; T_TEXT_EMPTY: 0..max, no control characters. */
static int rd_text(rd *r, vb_str *out, int kind, uint16_t max) {
    item it;
    uint64_t i;
    int rc = rd_item(r, &it);
    if (rc) return rc;
    if (it.kind != K_TEXT) return VB_ERR_SCHEMA;
    if (!utf8_ok(it.s, it.u)) return VB_ERR_CBOR;
    if (it.u > max || (it.u == 0 && kind != T_TEXT_EMPTY)) return VB_ERR_SCHEMA;
    for (i = 0; i < it.u; i++) {
        uint8_t c = it.s[i];
        if (kind == T_NAME) {
            if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-'))
                return VB_ERR_SCHEMA;
        } else if (c < 0x20 || c == 0x7F) {
            return VB_ERR_SCHEMA;
        }
    }
    out->ptr = (const char *)it.s;
    out->len = (uint16_t)it.u;
    return VB_OK;
}

static int rd_uint(rd *r, uint64_t lo, uint64_t hi, uint64_t *out) {
    item it;
    int rc = rd_item(r, &it);
    if (rc) return rc;
    if (it.kind != K_UINT || it.u < lo || it.u > hi) return VB_ERR_SCHEMA;
    *out = it.u;
    return VB_OK;
}

static int rd_num(rd *r, vb_num *out) {
    item it;
    int rc = rd_item(r, &it);
    if (rc) return rc;
    out->is_float = 0;
    out->f = 0;
    out->i = 0;
    if (it.kind == K_UINT) {
        if (it.u > (uint64_t)INT64_MAX) return VB_ERR_SCHEMA;
        out->i = (int64_t)it.u;
    } else if (it.kind == K_NINT) {
        if (it.u > (uint64_t)INT64_MAX) return VB_ERR_SCHEMA;
        out->i = -1 - (int64_t)it.u;
    } else if (it.kind == K_FLOAT) {
        if (it.u) return VB_ERR_SCHEMA; /* not finite */
        out->is_float = 1;
        out->f = it.f;
    } else {
        return VB_ERR_SCHEMA;
    }
    return VB_OK;
}

/* Exact comparison of two numbers: <0, 0, >0. */
static int cmp_int_double(int64_t i, double f) {
    int64_t t;
    double frac;
    if (f >= 9223372036854775808.0) return -1;
    if (f < -9223372036854775808.0) return 1;
    t = (int64_t)f;
    if (i < t) return -1;
    if (i > t) return 1;
    frac = f - (double)t;
    return frac > 0 ? -1 : frac < 0 ? 1 : 0;
}

static int num_cmp(const vb_num *a, const vb_num *b) {
    if (!a->is_float && !b->is_float) return a->i < b->i ? -1 : a->i > b->i;
    if (a->is_float && b->is_float) return a->f < b->f ? -1 : a->f > b->f;
    if (!a->is_float) return cmp_int_double(a->i, b->f);
    return -cmp_int_double(b->i, a->f);
}

static int str_eq(vb_str a, vb_str b) {
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

/* One channel map: keys ascending, 0 id, 1 name, 2 unit required, 3 min, 4 max. */
static int rd_channel(rd *r, vb_channel *ch) {
    item it;
    uint64_t n, k, v;
    int prev = -1, rc;
    unsigned seen = 0;
    memset(ch, 0, sizeof *ch);
    if ((rc = rd_item(r, &it))) return rc;
    if (it.kind != K_MAP) return VB_ERR_SCHEMA;
    for (n = it.u; n; n--) {
        if ((rc = rd_item(r, &it))) return rc;
        if (it.kind != K_UINT || it.u > 4 || (int)it.u <= prev) return VB_ERR_SCHEMA;
        k = it.u;
        prev = (int)k;
        seen |= 1u << k;
        switch (k) {
        case 0:
            if ((rc = rd_uint(r, 0, 255, &v))) return rc;
            ch->id = (uint8_t)v;
            break;
        case 1:
            if ((rc = rd_text(r, &ch->name, T_NAME, VB_MAX_NAME))) return rc;
            break;
        case 2:
            if ((rc = rd_text(r, &ch->unit, T_TEXT_EMPTY, VB_MAX_UNIT))) return rc;
            break;
        case 3:
            if ((rc = rd_num(r, &ch->min))) return rc;
            ch->has_min = 1;
            break;
        default:
            if ((rc = rd_num(r, &ch->max))) return rc;
            ch->has_max = 1;
            break;
        }
    }
    if ((seen & 7u) != 7u) return VB_ERR_SCHEMA;
    if (ch->has_min && ch->has_max && num_cmp(&ch->min, &ch->max) > 0) return VB_ERR_SCHEMA;
    return VB_OK;
}

static int rd_channels(rd *r, vb_channel_list *list) {
    item it;
    vb_channel ch;
    uint64_t i;
    int rc;
    if ((rc = rd_item(r, &it))) return rc;
    if (it.kind != K_ARRAY) return VB_ERR_SCHEMA;
    if (it.u > VB_MAX_CHANNELS) return VB_ERR_SCHEMA;
    list->items = NULL;
    list->cbor = r->p;
    list->count = (uint8_t)it.u;
    for (i = 0; i < it.u; i++)
        if ((rc = rd_channel(r, &ch))) return rc;
    list->end = r->p;
    return VB_OK;
}

int vb_channel_at(const vb_channel_list *list, uint8_t index, vb_channel *out) {
    rd r;
    uint8_t i;
    int rc;
    if (index >= list->count) return VB_ERR_VALUE;
    if (list->items) {
        *out = list->items[index];
        return VB_OK;
    }
    r.p = list->cbor;
    r.end = list->end;
    for (i = 0; i <= index; i++)
        if ((rc = rd_channel(&r, out))) return rc;
    return VB_OK;
}

/* Required and optional keys per message type (bit k = key k). */
#define B(k) (1u << (k))
static const uint16_t required_keys[8] = {
    B(0) | B(1) | B(2) | B(3) | B(4) | B(5) | B(6) | B(7), /* hello */
    B(0) | B(1) | B(2) | B(5) | B(8),                      /* hello_ack */
    B(0) | B(1) | B(9) | B(10),                            /* reading */
    B(0) | B(1) | B(9) | B(10),                            /* command */
    B(0) | B(1) | B(12),                                   /* ack */
    B(0) | B(1) | B(13),                                   /* nack */
    B(0) | B(1),                                           /* heartbeat */
    B(0) | B(1) | B(15),                                   /* error */
};
static const uint16_t optional_keys[8] = {
    0, 0, B(11), 0, 0, B(12) | B(14), B(11), B(9) | B(14),
};

static int check_hello(const vb_msg *m) {
    vb_channel a, b;
    const vb_channel_list *lists[2] = {&m->u.hello.sensors, &m->u.hello.actuators};
    int la, lb, rc;
    uint8_t i, j;
    for (la = 0; la < 2; la++) {
        for (i = 0; i < lists[la]->count; i++) {
            if ((rc = vb_channel_at(lists[la], i, &a))) return rc;
            for (lb = la; lb < 2; lb++) {
                for (j = (uint8_t)(lb == la ? i + 1 : 0); j < lists[lb]->count; j++) {
                    if ((rc = vb_channel_at(lists[lb], j, &b))) return rc;
                    if (a.id == b.id) return VB_ERR_SCHEMA;
                    if (la == lb && str_eq(a.name, b.name)) return VB_ERR_SCHEMA;
                }
            }
        }
    }
    return VB_OK;
}

int vb_decode(const uint8_t *payload, size_t len, vb_msg *m) {
    rd r;
    item it;
    uint64_t n, v;
    uint16_t seen = 0;
    int prev = -1, rc;
    r.p = payload;
    r.end = payload + len;
    memset(m, 0, sizeof *m);
    if ((rc = rd_item(&r, &it))) return rc;
    if (it.kind != K_MAP) return VB_ERR_SCHEMA;
    for (n = it.u; n; n--) {
        unsigned k;
        if ((rc = rd_item(&r, &it))) return rc;
        if (it.kind != K_UINT || it.u > 15 || (int)it.u <= prev) return VB_ERR_SCHEMA;
        k = (unsigned)it.u;
        if (k == 0) {
            if ((rc = rd_uint(&r, 0, 7, &v))) return rc;
            m->type = (uint8_t)v;
        } else {
            if (prev < 0) return VB_ERR_SCHEMA; /* no type: key 0 comes first */
            if (!((required_keys[m->type] | optional_keys[m->type]) & B(k))) return VB_ERR_SCHEMA;
        }
        prev = (int)k;
        seen |= (uint16_t)B(k);
        switch (k) {
        case 0: break;
        case 1:
            if ((rc = rd_uint(&r, 0, 0xFFFF, &v))) return rc;
            m->seq = (uint16_t)v;
            break;
        case 2:
            if (m->type == VB_HELLO) {
                uint64_t i;
                if ((rc = rd_item(&r, &it))) return rc;
                if (it.kind != K_ARRAY || it.u < 1 || it.u > VB_MAX_VERSIONS) return VB_ERR_SCHEMA;
                m->u.hello.n_versions = (uint8_t)it.u;
                for (i = 0; i < it.u; i++) {
                    if ((rc = rd_uint(&r, 1, 0xFFFF, &v))) return rc;
                    m->u.hello.versions[i] = (uint16_t)v;
                }
            } else {
                if ((rc = rd_uint(&r, 1, 0xFFFF, &v))) return rc;
                m->u.hello_ack.version = (uint16_t)v;
            }
            break;
        case 3:
            if ((rc = rd_text(&r, &m->u.hello.device_id, T_NAME, VB_MAX_NAME))) return rc;
            break;
        case 4:
            if ((rc = rd_text(&r, &m->u.hello.firmware, T_TEXT, VB_MAX_NAME))) return rc;
            break;
        case 5:
            if ((rc = rd_uint(&r, 32, 4096, &v))) return rc;
            if (m->type == VB_HELLO) m->u.hello.max_frame = (uint16_t)v;
            else m->u.hello_ack.max_frame = (uint16_t)v;
            break;
        case 6:
            if ((rc = rd_channels(&r, &m->u.hello.sensors))) return rc;
            break;
        case 7:
            if ((rc = rd_channels(&r, &m->u.hello.actuators))) return rc;
            break;
        case 8:
            if ((rc = rd_uint(&r, 100, 60000, &v))) return rc;
            m->u.hello_ack.heartbeat_ms = (uint16_t)v;
            break;
        case 9:
            if ((rc = rd_uint(&r, 0, 255, &v))) return rc;
            if (m->type == VB_READING) m->u.reading.channel = (uint8_t)v;
            else if (m->type == VB_COMMAND) m->u.command.channel = (uint8_t)v;
            else {
                m->u.error.channel = (uint8_t)v;
                m->has_channel = 1;
            }
            break;
        case 10:
            if ((rc = rd_num(&r, m->type == VB_READING ? &m->u.reading.value : &m->u.command.value)))
                return rc;
            break;
        case 11:
            if ((rc = rd_uint(&r, 0, 0xFFFFFFFFu, &v))) return rc;
            if (m->type == VB_READING) m->u.reading.time_ms = (uint32_t)v;
            else m->u.heartbeat.time_ms = (uint32_t)v;
            m->has_time_ms = 1;
            break;
        case 12:
            if ((rc = rd_uint(&r, 0, 0xFFFF, &v))) return rc;
            if (m->type == VB_ACK) m->u.ack.ref = (uint16_t)v;
            else {
                m->u.nack.ref = (uint16_t)v;
                m->has_ref = 1;
            }
            break;
        case 13:
            if ((rc = rd_uint(&r, 0, VB_NACK_TOO_LARGE, &v))) return rc;
            m->u.nack.reason = (uint8_t)v;
            break;
        case 14:
            if ((rc = rd_text(&r, m->type == VB_NACK ? &m->u.nack.detail : &m->u.error.detail,
                              T_TEXT_EMPTY, VB_MAX_DETAIL)))
                return rc;
            m->has_detail = 1;
            break;
        default: /* 15 */
            if ((rc = rd_uint(&r, 0, 0xFFFF, &v))) return rc;
            m->u.error.code = (uint16_t)v;
            break;
        }
    }
    if (r.p != r.end) return VB_ERR_CBOR; /* trailing bytes */
    if (prev < 0 || (seen & required_keys[m->type]) != required_keys[m->type]) return VB_ERR_SCHEMA;
    if (m->type == VB_HELLO) return check_hello(m);
    return VB_OK;
}

/* ---- CBOR writer ----------------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t cap, len;
    int err;
} wr;

static void w_byte(wr *w, uint8_t b) {
    if (w->len < w->cap) w->p[w->len++] = b;
    else w->err = VB_ERR_SPACE;
}

static void w_be(wr *w, uint64_t v, int n) {
    while (n--) w_byte(w, (uint8_t)(v >> (8 * n)));
}

static void w_head(wr *w, uint8_t major, uint64_t arg) {
    uint8_t m = (uint8_t)(major << 5);
    if (arg < 24) w_byte(w, m | (uint8_t)arg);
    else if (arg <= 0xFF) { w_byte(w, m | 24); w_be(w, arg, 1); }
    else if (arg <= 0xFFFF) { w_byte(w, m | 25); w_be(w, arg, 2); }
    else if (arg <= 0xFFFFFFFFu) { w_byte(w, m | 26); w_be(w, arg, 4); }
    else { w_byte(w, m | 27); w_be(w, arg, 8); }
}

static void w_text(wr *w, vb_str s) {
    uint16_t i;
    w_head(w, 3, s.len);
    for (i = 0; i < s.len; i++) w_byte(w, (uint8_t)s.ptr[i]);
}

/* The half-precision bits of f when f converts to half exactly. */
static int half_exact(float f, uint16_t *h) {
    uint32_t u, sign, mant;
    int32_t e;
    memcpy(&u, &f, 4);
    sign = (u >> 16) & 0x8000;
    mant = u & 0x7FFFFF;
    e = (int32_t)((u >> 23) & 0xFF);
    if (e == 0) {
        if (mant) return 0; /* float32 subnormals are far below half's range */
        *h = (uint16_t)sign;
        return 1;
    }
    e -= 127;
    if (e > 15) return 0;
    if (e >= -14) {
        if (mant & 0x1FFF) return 0;
        *h = (uint16_t)(sign | (uint32_t)(e + 15) << 10 | mant >> 13);
        return 1;
    }
    if (e >= -24) { /* half subnormal: m * 2^-24 */
        uint32_t full = mant | 0x800000, shift = (uint32_t)(-e - 1);
        if (full & ((1u << shift) - 1)) return 0;
        *h = (uint16_t)(sign | (full >> shift));
        return 1;
    }
    return 0;
}

/* Shortest of half, single, double that holds d exactly (RFC 8949 4.2.2). */
static void w_float(wr *w, double d) {
    float f;
    uint16_t h;
    uint32_t u;
    if (d >= -3.4028234663852886e38 && d <= 3.4028234663852886e38 && (double)(f = (float)d) == d) {
        if (half_exact(f, &h)) {
            w_byte(w, 0xF9);
            w_be(w, h, 2);
        } else {
            memcpy(&u, &f, 4);
            w_byte(w, 0xFA);
            w_be(w, u, 4);
        }
    } else {
        uint64_t bits;
        memcpy(&bits, &d, 8);
        w_byte(w, 0xFB);
        w_be(w, bits, 8);
    }
}

static int num_ok(const vb_num *n) {
    uint64_t bits;
    if (!n->is_float) return 1;
    if (sizeof(double) != 8) return 1;
    memcpy(&bits, &n->f, 8);
    return ((bits >> 52) & 0x7FF) != 0x7FF;
}

static void w_num(wr *w, const vb_num *n) {
    if (!num_ok(n)) w->err = VB_ERR_VALUE;
    else if (n->is_float) w_float(w, n->f);
    else if (n->i >= 0) w_head(w, 0, (uint64_t)n->i);
    else w_head(w, 1, (uint64_t)(-1 - n->i));
}

static void w_channels(wr *w, const vb_channel_list *list) {
    uint8_t i;
    vb_channel ch;
    w_head(w, 4, list->count);
    for (i = 0; i < list->count; i++) {
        if (vb_channel_at(list, i, &ch)) {
            w->err = VB_ERR_VALUE;
            return;
        }
        w_head(w, 5, 3u + ch.has_min + ch.has_max);
        w_head(w, 0, 0);
        w_head(w, 0, ch.id);
        w_head(w, 0, 1);
        w_text(w, ch.name);
        w_head(w, 0, 2);
        w_text(w, ch.unit);
        if (ch.has_min) { w_head(w, 0, 3); w_num(w, &ch.min); }
        if (ch.has_max) { w_head(w, 0, 4); w_num(w, &ch.max); }
    }
}

static unsigned popcount16(uint16_t v) {
    unsigned c = 0;
    while (v) { c += v & 1u; v >>= 1; }
    return c;
}

int vb_encode(const vb_msg *m, uint8_t *out, size_t cap) {
    wr w;
    uint16_t keys;
    unsigned k;
    uint8_t i;
    if (m->type > VB_ERROR) return VB_ERR_VALUE;
    w.p = out;
    w.cap = cap;
    w.len = 0;
    w.err = 0;
    keys = required_keys[m->type];
    if (m->type == VB_READING && m->has_time_ms) keys |= B(11);
    if (m->type == VB_HEARTBEAT && m->has_time_ms) keys |= B(11);
    if (m->type == VB_NACK && m->has_ref) keys |= B(12);
    if ((m->type == VB_NACK || m->type == VB_ERROR) && m->has_detail) keys |= B(14);
    if (m->type == VB_ERROR && m->has_channel) keys |= B(9);
    w_head(&w, 5, popcount16(keys));
    for (k = 0; k < 16; k++) {
        if (!(keys & B(k))) continue;
        w_head(&w, 0, k);
        switch (k) {
        case 0: w_head(&w, 0, m->type); break;
        case 1: w_head(&w, 0, m->seq); break;
        case 2:
            if (m->type == VB_HELLO) {
                if (m->u.hello.n_versions < 1 || m->u.hello.n_versions > VB_MAX_VERSIONS)
                    return VB_ERR_VALUE;
                w_head(&w, 4, m->u.hello.n_versions);
                for (i = 0; i < m->u.hello.n_versions; i++) w_head(&w, 0, m->u.hello.versions[i]);
            } else {
                w_head(&w, 0, m->u.hello_ack.version);
            }
            break;
        case 3: w_text(&w, m->u.hello.device_id); break;
        case 4: w_text(&w, m->u.hello.firmware); break;
        case 5:
            w_head(&w, 0, m->type == VB_HELLO ? m->u.hello.max_frame : m->u.hello_ack.max_frame);
            break;
        case 6: w_channels(&w, &m->u.hello.sensors); break;
        case 7: w_channels(&w, &m->u.hello.actuators); break;
        case 8: w_head(&w, 0, m->u.hello_ack.heartbeat_ms); break;
        case 9:
            w_head(&w, 0, m->type == VB_READING ? m->u.reading.channel
                          : m->type == VB_COMMAND ? m->u.command.channel
                                                  : m->u.error.channel);
            break;
        case 10: w_num(&w, m->type == VB_READING ? &m->u.reading.value : &m->u.command.value); break;
        case 11:
            w_head(&w, 0, m->type == VB_READING ? m->u.reading.time_ms : m->u.heartbeat.time_ms);
            break;
        case 12: w_head(&w, 0, m->type == VB_ACK ? m->u.ack.ref : m->u.nack.ref); break;
        case 13:
            if (m->u.nack.reason > VB_NACK_TOO_LARGE) return VB_ERR_VALUE;
            w_head(&w, 0, m->u.nack.reason);
            break;
        case 14: w_text(&w, m->type == VB_NACK ? m->u.nack.detail : m->u.error.detail); break;
        default: w_head(&w, 0, m->u.error.code); break;
        }
    }
    return w.err ? w.err : (int)w.len;
}

int vb_frame_encode(const vb_msg *m, uint8_t *out, size_t cap, size_t max_frame) {
    /* Encode the payload high in out, then COBS-encode it downwards in place:
     * the writer stays behind the reader because off >= 1 + body / 254. */
    size_t off = 1 + cap / 254, len;
    uint16_t crc;
    int n;
    if (cap < off + 4) return VB_ERR_SPACE;
    n = vb_encode(m, out + off, cap - off - 3);
    if (n < 0) return n;
    crc = vb_crc16(0xFFFF, out + off, (size_t)n);
    out[off + (size_t)n] = (uint8_t)(crc >> 8);
    out[off + (size_t)n + 1] = (uint8_t)crc;
    len = cobs_encode_raw(out + off, (size_t)n + 2, out);
    if (len > max_frame) return VB_ERR_SPACE;
    out[len] = 0;
    return (int)len + 1;
}

/* ---- streaming receiver ------------------------------------------------------------ */

void vb_rx_init(vb_rx *rx, uint16_t max_frame) {
    rx->len = 0;
    rx->overflow = 0;
    rx->max_frame = max_frame > VB_MAX_FRAME ? VB_MAX_FRAME : max_frame;
}

int vb_rx_push(vb_rx *rx, uint8_t byte, vb_msg *msg) {
    size_t plen, n;
    int rc;
    if (byte == 0) {
        n = rx->len;
        rx->len = 0;
        if (rx->overflow) {
            rx->overflow = 0; /* the end of an overlong frame, already reported */
            return 0;
        }
        if (n == 0) return 0; /* idle fill between frames */
        if ((rc = vb_unframe(rx->buf, n, rx->max_frame, &plen))) return rc;
        if ((rc = vb_decode(rx->buf, plen, msg))) return rc;
        return 1;
    }
    if (rx->overflow) return 0;
    if (rx->len >= rx->max_frame) {
        rx->overflow = 1;
        return VB_ERR_LONG;
    }
    rx->buf[rx->len++] = byte;
    return 0;
}

vb_num vb_int(int64_t i) {
    vb_num n;
    n.is_float = 0;
    n.i = i;
    n.f = 0;
    return n;
}

vb_num vb_float(double f) {
    vb_num n;
    n.is_float = 1;
    n.i = 0;
    n.f = f;
    return n;
}

vb_str vb_cstr(const char *s) {
    vb_str out;
    out.ptr = s;
    out.len = (uint16_t)strlen(s);
    return out;
}
