/* libFuzzer: the worker's decoder of key-holder answers (wk_keyproto.c).  An
 * accepted answer is exactly one frame of a known version and status, and its
 * payload lies inside the packet. */
#include <stdlib.h>

#include "wk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t status;
    uint32_t id;
    const uint8_t *p;
    size_t n;
    if (wk_kp_decode_response(data, size, &status, &id, &p, &n) == 0) {
        if (data[0] != WK_KP_VERSION || status > WK_KP_STATUS_MAX || n > WK_KP_MAX_PAYLOAD)
            abort();
        if (p != data + WK_KP_RESP_HEADER || WK_KP_RESP_HEADER + n != size)
            abort();
    }
    /* and the request encoder, with a payload of any length */
    uint8_t req[WK_KP_REQ_HEADER + WK_KP_MAX_PAYLOAD];
    size_t cap = size > 0 ? data[0] * 5u % (sizeof req + 1) : sizeof req;
    int r = wk_kp_encode_request(size > 1 ? data[1] : 1, 7, 9, data, size, req, cap);
    if (r >= 0 && ((size_t)r != WK_KP_REQ_HEADER + size || (size_t)r > cap))
        abort();
    return 0;
}
