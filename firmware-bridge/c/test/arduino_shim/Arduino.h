/* A tiny Arduino API for running an example sketch on a PC (tests only): Serial is
 * stdin/stdout (the test connects them to a pseudo-terminal), millis() is the
 * monotonic clock, analogRead() returns a slow ramp. */
#ifndef ARDUINO_SHIM_H
#define ARDUINO_SHIM_H
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define A0 0
#define A1 1
#define OUTPUT 1

static unsigned long millis(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long)ts.tv_sec * 1000UL + (unsigned long)(ts.tv_nsec / 1000000L);
}
static int analogRead(int pin) { return (int)((millis() / 100 + (unsigned long)pin * 300) % (pin ? 1024 : 256)); }
static int shim_pwm[16];
static void analogWrite(int pin, int value) { shim_pwm[pin & 15] = value; }
static void pinMode(int, int) {}

class ShimSerial {
    uint8_t buf[512];
    int len = 0, pos = 0;

  public:
    void begin(unsigned long) { fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK); }
    int available() {
        if (pos == len) {
            ssize_t n = ::read(0, buf, sizeof buf);
            pos = 0;
            len = n > 0 ? (int)n : 0;
        }
        return len - pos;
    }
    int read() { return available() ? buf[pos++] : -1; }
    size_t write(uint8_t b) { return write(&b, 1); }
    size_t write(const uint8_t *p, size_t n) {
        size_t done = 0;
        while (done < n) {
            ssize_t w = ::write(1, p + done, n - done);
            if (w > 0) done += (size_t)w;
        }
        return n;
    }
};
static ShimSerial Serial;

void setup();
void loop();
int main() {
    setup();
    for (;;) {
        loop();
        usleep(500);
    }
}
#endif
