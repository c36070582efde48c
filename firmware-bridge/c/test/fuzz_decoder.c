/* libFuzzer entry point for the C decoder (clang -fsanitize=fuzzer,address,undefined). */
#include <string.h>

#include "vsm_bridge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t buf[4096];
    static vb_rx rx;
    vb_msg m;
    size_t plen, i;
    if (size <= sizeof buf) {
        memcpy(buf, data, size);
        if (vb_unframe(buf, size, sizeof buf, &plen) == VB_OK && vb_decode(buf, plen, &m) == VB_OK) {
            uint8_t out[512];
            (void)vb_frame_encode(&m, out, sizeof out, 256);
        }
        (void)vb_decode(data, size, &m);
    }
    vb_rx_init(&rx, 256);
    for (i = 0; i < size; i++) (void)vb_rx_push(&rx, data[i], &m);
    return 0;
}
