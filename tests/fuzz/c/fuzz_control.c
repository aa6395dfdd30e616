/* libFuzzer: the worker's decoder of supervisor -> worker messages (wk_control.c).
 * Anything it accepts must be exactly one of the three shapes, with an address
 * of its family's length and a printable, NUL-terminated reason.  Then the
 * worker's encoders get strings of every length, and must refuse, never overrun. */
#include <stdlib.h>
#include <string.h>

#include "wk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wk_sup_msg m;
    if (wk_decode_sup(data, size, &m) == 0) {
        if (m.type == WK_MSG_CONNECTION) {
            if (m.local.family != 4 && m.local.family != 6)
                abort();
            if (size != (m.local.family == 4 ? 8u : 20u))
                abort();
        } else if (m.type == WK_MSG_BACKEND_READY) {
            if (size != 1)
                abort();
        } else if (m.type == WK_MSG_BACKEND_FAILED) {
            if (strlen(m.reason) != m.reason_len || size != 2u + m.reason_len)
                abort();
            for (size_t i = 0; i < m.reason_len; i++)
                if (m.reason[i] < 0x20 || m.reason[i] > 0x7e)
                    abort();
        } else {
            abort();
        }
    }
    /* The encoders: string fields cut from the input, any length. */
    uint8_t out[WK_CTL_MAX];
    size_t cap = size > 0 ? data[0] % (sizeof out + 1) : sizeof out;
    int a = size > 1 ? data[1] : 0, b = size > 2 ? data[2] : 0;
    struct wk_str s1 = {(const char *)data, size < 400 ? (int)size : 400};
    struct wk_str s2 = {(const char *)data, (int)(size % 1500) - (a & 1 ? 1 : 0)};
    struct wk_handshake_msg h = {.vhost = (uint16_t)a, .handshake_us = (uint32_t)b,
                                 .version = s1, .cipher = s1, .alpn = s2, .sni = s1,
                                 .client_cn = s2};
    int n = wk_encode_handshake(&h, out, cap);
    if (n > (int)cap)
        abort();
    struct wk_finished_msg f = {.outcome = (uint8_t)a, .vhost = (uint16_t)b, .sni = s2,
                                .detail = s1};
    n = wk_encode_finished(&f, out, cap);
    if (n > (int)cap)
        abort();
    return 0;
}
