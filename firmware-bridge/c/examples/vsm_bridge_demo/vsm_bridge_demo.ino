/*
 * vsm_bridge_demo -- example firmware for the vsm-edge firmware bridge (protocol 1).
 *
 * A temperature sensor on A0 (an LM35-like 10 mV/degC part), a light sensor on A1
 * and a fan on PWM pin 9. Speaks the protocol of firmware-bridge/PROTOCOL.md with
 * the reference codec (install firmware-bridge/c as an Arduino library): hello
 * until acknowledged, one reading per sensor per second, commands acknowledged
 * (and carried out once even when the host retransmits), heartbeats when idle,
 * back to hello when the host falls silent.
 *
 * The same file compiles on a PC against a tiny Arduino shim (the test suite does
 * this and talks to it over a pseudo-terminal).
 */
#if defined(__AVR__)
#define VB_MAX_CHANNELS 4 /* smaller hello decoder on 2 KB-RAM parts */
#endif
#include <vsm_bridge.h>

#define FAN_PIN 9
#define READ_PERIOD_MS 1000UL
#define HELLO_PERIOD_MS 500UL
#define NACK_GAP_MS 50UL

/* Channel ids are unique across sensors and actuators. */
static const vb_channel SENSORS[] = {
    {1, {"temperature", 11}, {"degC", 4}, 1, 1, {1, 0, -40.0}, {1, 0, 125.0}},
    {2, {"light", 5}, {"", 0}, 1, 1, {0, 0, 0.0}, {0, 1023, 0.0}},
};
static const vb_channel ACTUATORS[] = {
    {10, {"fan", 3}, {"pwm", 3}, 1, 1, {0, 0, 0.0}, {0, 255, 0.0}},
};

static vb_rx rx;
static vb_msg msg;          /* the last message received (valid until the next byte) */
static uint8_t tx[VB_MAX_FRAME + 8];
static uint8_t answer[32];  /* the last ACK/NACK frame, sent again on a retransmission */
static int answer_len = 0;
static int32_t last_cmd_seq = -1;
static uint16_t tx_seq = 0;
static uint16_t peer_max_frame = VB_DEFAULT_MAX_FRAME;
static uint16_t heartbeat_ms = 1000;
static bool connected = false;
static unsigned long last_rx, last_tx, last_hello, last_read, last_nack;

static int send_msg(vb_msg *m) {
    int n;
    m->seq = tx_seq++;
    n = vb_frame_encode(m, tx, sizeof tx, peer_max_frame);
    if (n > 0) {
        Serial.write(tx, (size_t)n);
        last_tx = millis();
    }
    return n;
}

static void send_hello(void) {
    vb_msg m;
    memset(&m, 0, sizeof m);
    m.type = VB_HELLO;
    m.u.hello.n_versions = 1;
    m.u.hello.versions[0] = VB_PROTOCOL_VERSION;
    m.u.hello.device_id = vb_cstr("arduino-demo");
    m.u.hello.firmware = vb_cstr("demo 1.0.0");
    m.u.hello.max_frame = VB_MAX_FRAME;
    m.u.hello.sensors.items = SENSORS;
    m.u.hello.sensors.count = sizeof SENSORS / sizeof SENSORS[0];
    m.u.hello.actuators.items = ACTUATORS;
    m.u.hello.actuators.count = sizeof ACTUATORS / sizeof ACTUATORS[0];
    connected = false;
    peer_max_frame = VB_DEFAULT_MAX_FRAME;
    last_hello = millis();
    send_msg(&m);
}

static void send_nack(uint8_t reason, int32_t ref) {
    vb_msg m;
    unsigned long now = millis();
    if (now - last_nack < NACK_GAP_MS) return; /* a burst of noise gets one NACK */
    last_nack = now;
    memset(&m, 0, sizeof m);
    m.type = VB_NACK;
    m.u.nack.reason = reason;
    if (ref >= 0) {
        m.has_ref = 1;
        m.u.nack.ref = (uint16_t)ref;
    }
    send_msg(&m);
}

static void answer_command(const vb_msg *cmd, int reason) {
    vb_msg m;
    int n;
    memset(&m, 0, sizeof m);
    if (reason < 0) {
        m.type = VB_ACK;
        m.u.ack.ref = cmd->seq;
    } else {
        m.type = VB_NACK;
        m.u.nack.reason = (uint8_t)reason;
        m.has_ref = 1;
        m.u.nack.ref = cmd->seq;
    }
    m.seq = tx_seq++;
    n = vb_frame_encode(&m, answer, sizeof answer, peer_max_frame);
    answer_len = n > 0 ? n : 0;
    if (answer_len) {
        Serial.write(answer, (size_t)answer_len);
        last_tx = millis();
    }
}

static void on_command(const vb_msg *m) {
    const vb_num *v = &m->u.command.value;
    long value;
    if (!connected) { /* the host's HELLO_ACK never reached us */
        send_nack(VB_NACK_NO_SESSION, m->seq);
        send_hello();
        return;
    }
    if ((int32_t)m->seq == last_cmd_seq) { /* a retransmission: answer again, act once */
        if (answer_len) Serial.write(answer, (size_t)answer_len);
        return;
    }
    last_cmd_seq = m->seq;
    if (m->u.command.channel != 10) {
        answer_command(m, VB_NACK_UNKNOWN_CHANNEL);
        return;
    }
    value = v->is_float ? (long)v->f : (long)v->i;
    if ((v->is_float && (v->f < 0 || v->f > 255)) || (!v->is_float && (v->i < 0 || v->i > 255))) {
        answer_command(m, VB_NACK_OUT_OF_RANGE);
        return;
    }
    analogWrite(FAN_PIN, (int)value);
    answer_command(m, -1);
}

static void on_message(const vb_msg *m) {
    last_rx = millis();
    switch (m->type) {
    case VB_HELLO_ACK:
        if (m->u.hello_ack.version != VB_PROTOCOL_VERSION || m->u.hello_ack.max_frame > VB_MAX_FRAME)
            break;
        peer_max_frame = m->u.hello_ack.max_frame;
        heartbeat_ms = m->u.hello_ack.heartbeat_ms;
        if (!connected) last_cmd_seq = -1;
        connected = true;
        break;
    case VB_COMMAND: on_command(m); break;
    case VB_NACK:
        if (m->u.nack.reason == VB_NACK_NO_SESSION) send_hello();
        else if (!m->has_ref && !connected) send_hello();
        break;
    default: break; /* heartbeats only refresh last_rx */
    }
}

static void send_reading(uint8_t channel, vb_num value) {
    vb_msg m;
    memset(&m, 0, sizeof m);
    m.type = VB_READING;
    m.u.reading.channel = channel;
    m.u.reading.value = value;
    m.has_time_ms = 1;
    m.u.reading.time_ms = (uint32_t)millis();
    send_msg(&m);
}

void setup() {
    Serial.begin(115200);
    pinMode(FAN_PIN, OUTPUT);
    vb_rx_init(&rx, VB_MAX_FRAME);
    Serial.write((uint8_t)0); /* an empty frame: flushes whatever the host half-received */
    send_hello();
}

void loop() {
    unsigned long now = millis();
    while (Serial.available() > 0) {
        int rc = vb_rx_push(&rx, (uint8_t)Serial.read(), &msg);
        if (rc == 1) on_message(&msg);
        else if (rc == VB_ERR_LONG) send_nack(VB_NACK_TOO_LARGE, -1);
        else if (rc == VB_ERR_CBOR || rc == VB_ERR_SCHEMA) send_nack(VB_NACK_MALFORMED, -1);
        else if (rc < 0) send_nack(VB_NACK_CRC, -1);
    }
    now = millis();
    if (!connected) {
        if (now - last_hello >= HELLO_PERIOD_MS) send_hello();
        return;
    }
    if (now - last_rx >= 3UL * heartbeat_ms) { /* the host is gone: start over */
        send_hello();
        return;
    }
    if (now - last_read >= READ_PERIOD_MS) {
        last_read = now;
        /* LM35: 10 mV per degC; 5 V reference over 1024 steps */
        send_reading(1, vb_float((float)analogRead(A0) * (500.0f / 1024.0f)));
        send_reading(2, vb_int(analogRead(A1)));
    }
    if (now - last_tx >= heartbeat_ms) {
        vb_msg m;
        memset(&m, 0, sizeof m);
        m.type = VB_HEARTBEAT;
        m.has_time_ms = 1;
        m.u.heartbeat.time_ms = (uint32_t)now;
        send_msg(&m);
    }
}
