/*
 * vsm_bridge.h -- reference codec of the vsm-edge firmware bridge (protocol 1).
 *
 * Frames:   COBS(payload || CRC-16) followed by one 0x00 byte.
 * CRC-16:   CRC-16/IBM-3740 (a.k.a. CCITT-FALSE): poly 0x1021, init 0xFFFF,
 *           no reflection, xorout 0; check("123456789") = 0x29B1; sent MSB first.
 * Payload:  one CBOR map with small unsigned integer keys (PROTOCOL.md section 4).
 *
 * No malloc, no libc beyond <string.h>/<stdint.h>/<stddef.h>; all buffers are fixed
 * (VB_MAX_FRAME). Decoded text strings point into the receive buffer: they stay
 * valid until the next byte is pushed into the receiver. C99, any 8-bit MCU up.
 */
#ifndef VSM_BRIDGE_H
#define VSM_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VB_PROTOCOL_VERSION 1
#define VB_DEFAULT_MAX_FRAME 256

/* The largest encoded frame (delimiter excluded) this build receives or sends. */
#ifndef VB_MAX_FRAME
#define VB_MAX_FRAME 256
#endif
/* Channels per list (sensors, actuators) the hello decoder accepts (protocol: 16). */
#ifndef VB_MAX_CHANNELS
#define VB_MAX_CHANNELS 16
#endif
#define VB_MAX_VERSIONS 8
#define VB_MAX_NAME 32
#define VB_MAX_UNIT 16
#define VB_MAX_DETAIL 64

/* Results. Frame-level errors first, then message-level, then encoder errors. */
typedef enum {
    VB_OK = 0,
    VB_ERR_COBS = -1,   /* COBS structure broken (block runs past the end)      */
    VB_ERR_SHORT = -2,  /* fewer than 3 bytes after COBS decoding               */
    VB_ERR_CRC = -3,    /* CRC-16 mismatch                                      */
    VB_ERR_LONG = -4,   /* more than max_frame bytes before a delimiter         */
    VB_ERR_CBOR = -5,   /* payload is not CBOR of the accepted subset           */
    VB_ERR_SCHEMA = -6, /* well-formed CBOR, but not a valid protocol message   */
    VB_ERR_SPACE = -7,  /* encoder: the output buffer or max_frame is too small */
    VB_ERR_VALUE = -8   /* encoder: a field is out of its range                 */
} vb_status;

typedef enum {
    VB_HELLO = 0,
    VB_HELLO_ACK = 1,
    VB_READING = 2,
    VB_COMMAND = 3,
    VB_ACK = 4,
    VB_NACK = 5,
    VB_HEARTBEAT = 6,
    VB_ERROR = 7
} vb_type;

typedef enum {
    VB_NACK_CRC = 0,
    VB_NACK_MALFORMED = 1,
    VB_NACK_UNSUPPORTED_VERSION = 2,
    VB_NACK_NO_SESSION = 3,
    VB_NACK_UNKNOWN_CHANNEL = 4,
    VB_NACK_OUT_OF_RANGE = 5,
    VB_NACK_BUSY = 6,
    VB_NACK_FAILED = 7,
    VB_NACK_TOO_LARGE = 8
} vb_nack_reason;

/* A text string: UTF-8 bytes, not NUL-terminated. */
typedef struct {
    const char *ptr;
    uint16_t len;
} vb_str;

/* A number: a 64-bit integer or a double (a float on AVR, where double is 32-bit). */
typedef struct {
    uint8_t is_float;
    int64_t i;
    double f;
} vb_num;

typedef struct {
    uint8_t id;
    vb_str name;
    vb_str unit;
    uint8_t has_min, has_max;
    vb_num min, max;
} vb_channel;

/* A list of channels: given as an array when encoding; when decoding it refers
 * to the CBOR array in the payload, read with vb_channel_at(). */
typedef struct {
    const vb_channel *items; /* encode: the caller's array; decode: NULL */
    const uint8_t *cbor;     /* decode: first item in the payload */
    const uint8_t *end;
    uint8_t count;
} vb_channel_list;

typedef struct {
    uint8_t type; /* vb_type */
    uint16_t seq;
    /* optional fields present (for fields marked optional below) */
    uint8_t has_time_ms, has_ref, has_detail, has_channel;
    union {
        struct {
            uint8_t n_versions;
            uint16_t versions[VB_MAX_VERSIONS];
            vb_str device_id, firmware;
            uint16_t max_frame;
            vb_channel_list sensors, actuators;
        } hello;
        struct {
            uint16_t version, max_frame, heartbeat_ms;
        } hello_ack;
        struct {
            uint8_t channel;
            vb_num value;
            uint32_t time_ms; /* optional */
        } reading;
        struct {
            uint8_t channel;
            vb_num value;
        } command;
        struct {
            uint16_t ref;
        } ack;
        struct {
            uint8_t reason;
            uint16_t ref; /* optional */
            vb_str detail; /* optional */
        } nack;
        struct {
            uint32_t time_ms; /* optional */
        } heartbeat;
        struct {
            uint16_t code;
            uint8_t channel; /* optional */
            vb_str detail;   /* optional */
        } error;
    } u;
} vb_msg;

/* CRC-16/IBM-3740 of data, continuing from crc (start with 0xFFFF). */
uint16_t vb_crc16(uint16_t crc, const uint8_t *data, size_t len);

/* COBS-encode in[0..len) into out (no delimiter); returns the length or VB_ERR_SPACE.
 * out may not overlap in. */
int vb_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);

/* Decode one frame in place (buf holds the bytes between two delimiters); on
 * success *payload_len is the CBOR payload length at buf[0]. */
int vb_unframe(uint8_t *buf, size_t len, size_t max_frame, size_t *payload_len);

/* Decode a CBOR payload into *msg (strings and channel lists point into payload). */
int vb_decode(const uint8_t *payload, size_t len, vb_msg *msg);

/* Read channel number index of a list (decoded or given). */
int vb_channel_at(const vb_channel_list *list, uint8_t index, vb_channel *out);

/* Encode msg as a CBOR payload; returns its length or a negative vb_status. */
int vb_encode(const vb_msg *msg, uint8_t *out, size_t cap);

/* Encode msg as a whole frame, delimiter included, no longer than max_frame + 1;
 * returns the number of bytes to write or a negative vb_status. */
int vb_frame_encode(const vb_msg *msg, uint8_t *out, size_t cap, size_t max_frame);

/* The streaming receiver: push every byte read from the line. */
typedef struct {
    uint8_t buf[VB_MAX_FRAME];
    uint16_t len;
    uint16_t max_frame; /* what this end accepts; <= VB_MAX_FRAME */
    uint8_t overflow;
} vb_rx;

void vb_rx_init(vb_rx *rx, uint16_t max_frame);

/* Returns 0 (need more bytes), 1 (a message: *msg is valid until the next push),
 * or a negative vb_status for a rejected frame (count it; NACK it, rate-limited). */
int vb_rx_push(vb_rx *rx, uint8_t byte, vb_msg *msg);

/* Helpers to build values. */
vb_num vb_int(int64_t i);
vb_num vb_float(double f);
vb_str vb_cstr(const char *s);

#ifdef __cplusplus
}
#endif
#endif /* VSM_BRIDGE_H */
