/*
 * vb_tool -- host-side driver of the C reference codec, for the pytest suite and
 * the benchmark (never built for an MCU). Reads hex lines on stdin.
 *
 *   vb_tool frames [MAX_FRAME]   each line: one frame without its delimiter;
 *                                prints {"result":"ok","message":{..},"frame":"<re-encoded>"}
 *                                or {"result":"error","error":"cobs|short|crc|long|message"}
 *   vb_tool stream [MAX_FRAME]   each line: a byte stream pushed byte by byte through vb_rx;
 *                                prints one line per frame event, then {"result":"end"}
 *   vb_tool bench N              first line: one frame with delimiter; decodes it N times
 *                                through vb_rx and encodes it N times; prints figures
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vsm_bridge.h"

#define LINE_MAX_BYTES 20000

static char line[2 * LINE_MAX_BYTES + 16];
static uint8_t bytes[LINE_MAX_BYTES];

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static long parse_hex(const char *s, uint8_t *out) {
    long n = 0;
    while (s[0] && s[0] != '\n' && s[0] != '\r') {
        int hi = hexval(s[0]), lo = s[1] ? hexval(s[1]) : -1;
        if (hi < 0 || lo < 0 || n >= LINE_MAX_BYTES) return -1;
        out[n++] = (uint8_t)(hi << 4 | lo);
        s += 2;
    }
    return n;
}

static void print_str(vb_str s) {
    uint16_t i;
    putchar('"');
    for (i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20 || c == 0x7F) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static void print_num(const vb_num *n) {
    if (n->is_float) {
        char buf[40];
        snprintf(buf, sizeof buf, "%.17g", n->f);
        if (!strpbrk(buf, ".eEn")) strcat(buf, ".0");
        fputs(buf, stdout);
    } else {
        printf("%lld", (long long)n->i);
    }
}

static void print_channels(const vb_channel_list *list) {
    uint8_t i;
    vb_channel ch;
    putchar('[');
    for (i = 0; i < list->count; i++) {
        vb_channel_at(list, i, &ch);
        if (i) putchar(',');
        printf("{\"id\":%u,\"name\":", ch.id);
        print_str(ch.name);
        fputs(",\"unit\":", stdout);
        print_str(ch.unit);
        if (ch.has_min) { fputs(",\"min\":", stdout); print_num(&ch.min); }
        if (ch.has_max) { fputs(",\"max\":", stdout); print_num(&ch.max); }
        putchar('}');
    }
    putchar(']');
}

static const char *type_names[] = {"hello", "hello_ack", "reading", "command",
                                   "ack",   "nack",      "heartbeat", "error"};
static const char *reason_names[] = {"crc",     "malformed", "unsupported_version",
                                     "no_session", "unknown_channel", "out_of_range",
                                     "busy",    "failed",    "too_large"};

static void print_msg(const vb_msg *m) {
    uint8_t i;
    printf("{\"type\":\"%s\",\"seq\":%u", type_names[m->type], m->seq);
    switch (m->type) {
    case VB_HELLO:
        fputs(",\"versions\":[", stdout);
        for (i = 0; i < m->u.hello.n_versions; i++) printf(i ? ",%u" : "%u", m->u.hello.versions[i]);
        fputs("],\"device_id\":", stdout);
        print_str(m->u.hello.device_id);
        fputs(",\"firmware\":", stdout);
        print_str(m->u.hello.firmware);
        printf(",\"max_frame\":%u,\"sensors\":", m->u.hello.max_frame);
        print_channels(&m->u.hello.sensors);
        fputs(",\"actuators\":", stdout);
        print_channels(&m->u.hello.actuators);
        break;
    case VB_HELLO_ACK:
        printf(",\"version\":%u,\"max_frame\":%u,\"heartbeat_ms\":%u", m->u.hello_ack.version,
               m->u.hello_ack.max_frame, m->u.hello_ack.heartbeat_ms);
        break;
    case VB_READING:
        printf(",\"channel\":%u,\"value\":", m->u.reading.channel);
        print_num(&m->u.reading.value);
        if (m->has_time_ms) printf(",\"time_ms\":%lu", (unsigned long)m->u.reading.time_ms);
        break;
    case VB_COMMAND:
        printf(",\"channel\":%u,\"value\":", m->u.command.channel);
        print_num(&m->u.command.value);
        break;
    case VB_ACK: printf(",\"ref\":%u", m->u.ack.ref); break;
    case VB_NACK:
        printf(",\"reason\":\"%s\"", reason_names[m->u.nack.reason]);
        if (m->has_ref) printf(",\"ref\":%u", m->u.nack.ref);
        if (m->has_detail) { fputs(",\"detail\":", stdout); print_str(m->u.nack.detail); }
        break;
    case VB_HEARTBEAT:
        if (m->has_time_ms) printf(",\"time_ms\":%lu", (unsigned long)m->u.heartbeat.time_ms);
        break;
    default:
        printf(",\"code\":%u", m->u.error.code);
        if (m->has_channel) printf(",\"channel\":%u", m->u.error.channel);
        if (m->has_detail) { fputs(",\"detail\":", stdout); print_str(m->u.error.detail); }
        break;
    }
    putchar('}');
}

static const char *error_name(int rc) {
    switch (rc) {
    case VB_ERR_COBS: return "cobs";
    case VB_ERR_SHORT: return "short";
    case VB_ERR_CRC: return "crc";
    case VB_ERR_LONG: return "long";
    default: return "message";
    }
}

static void print_result(int rc, const vb_msg *m) {
    if (rc < 0) {
        printf("{\"result\":\"error\",\"error\":\"%s\"}\n", error_name(rc));
        return;
    }
    {
        static uint8_t out[LINE_MAX_BYTES];
        long i;
        int n = vb_frame_encode(m, out, sizeof out, 4096);
        fputs("{\"result\":\"ok\",\"message\":", stdout);
        print_msg(m);
        fputs(",\"frame\":\"", stdout);
        for (i = 0; i < n; i++) printf("%02x", out[i]);
        printf("\",\"encode_status\":%d}\n", n < 0 ? n : 0);
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static vb_rx rx;

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "frames";
    unsigned long max_frame = argc > 2 ? strtoul(argv[2], NULL, 10) : 256;
    vb_msg m;
    if (!strcmp(mode, "bench")) {
        long n = parse_hex(fgets(line, sizeof line, stdin) ? line : "", bytes), i, k;
        long iters = argc > 2 ? atol(argv[2]) : 1000000;
        int rc = 0;
        double t0, t1, t2;
        static uint8_t out[1024];
        if (n <= 0) return 2;
        vb_rx_init(&rx, VB_DEFAULT_MAX_FRAME);
        t0 = now_s();
        for (k = 0; k < iters; k++)
            for (i = 0; i < n; i++) rc |= vb_rx_push(&rx, bytes[i], &m) < 0;
        t1 = now_s();
        for (k = 0; k < iters; k++) rc |= vb_frame_encode(&m, out, sizeof out, 256) < 0;
        t2 = now_s();
        printf("{\"frames\":%ld,\"frame_bytes\":%ld,\"decode_s\":%.6f,\"encode_s\":%.6f,"
               "\"decode_frames_per_s\":%.0f,\"encode_frames_per_s\":%.0f,\"errors\":%d}\n",
               iters, n, t1 - t0, t2 - t1, (double)iters / (t1 - t0), (double)iters / (t2 - t1), rc);
        return rc;
    }
    while (fgets(line, sizeof line, stdin)) {
        long n = parse_hex(line, bytes), i;
        if (n < 0) {
            puts("{\"result\":\"bad-hex\"}");
        } else if (!strcmp(mode, "frames")) {
            size_t plen;
            int rc = vb_unframe(bytes, (size_t)n, max_frame, &plen);
            if (rc == 0) rc = vb_decode(bytes, plen, &m);
            print_result(rc, &m);
        } else {
            vb_rx_init(&rx, (uint16_t)max_frame);
            for (i = 0; i < n; i++) {
                int rc = vb_rx_push(&rx, bytes[i], &m);
                if (rc != 0) print_result(rc, &m);
            }
            puts("{\"result\":\"end\"}");
        }
        fflush(stdout);
    }
    return 0;
}
