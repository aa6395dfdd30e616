/* libFuzzer: the fork server's request decoder (sandbox/_jail/request.c), which reads
 * every packet the C loop receives.  Anything it accepts must be exactly one request
 * of a known kind, with its name inside the packet and at most JAIL_REQ_MAX_FDS fds.
 * Then the reply encoder and the id-map text get texts and templates cut from the
 * input, with every capacity: they must refuse, never overrun, and what they make
 * must be what they say. */
#include <stdlib.h>
#include <string.h>

#include "serve.h"

static void check_request(const uint8_t *data, size_t size)
{
    struct jail_request req;
    int id_known;
    char why[128];
    if (jail_request_decode(data, size, &req, &id_known, why, sizeof why) != 0) {
        if (strlen(why) >= sizeof why)
            abort();
        return;
    }
    if (!id_known || size != (size_t)JAIL_REQ_HEAD + req.name_len)
        abort();
    if (req.kind != JAIL_REQ_SPAWN && req.kind != JAIL_REQ_UPDATE)
        abort();
    if (req.nfds > JAIL_REQ_MAX_FDS || req.name_len == 0 || req.name_len > JAIL_REQ_MAX_NAME)
        abort();
    if (req.name != (const char *)data + JAIL_REQ_HEAD || memchr(req.name, 0, req.name_len))
        abort();
    if (req.kind == JAIL_REQ_UPDATE && (req.nfds != 1 || req.uid != 0))
        abort();
}

static void check_reply(const uint8_t *data, size_t size)
{
    unsigned char out[JAIL_REPLY_MAX + 64];
    size_t cap = size > 0 ? (size_t)data[0] * 17 % (sizeof out + 1) : sizeof out;
    size_t layer_len = size > 1 ? data[1] % (JAIL_REPLY_MAX_LAYER + 8) : 0;
    size_t message_len = size > 2 ? (size_t)data[2] * 19 : 0;
    uint16_t status = size > 3 ? data[3] % 3 : 0;
    uint32_t flags = size > 4 ? data[4] % 4 : 0;
    const char *text = (const char *)data;
    if (layer_len > size)
        layer_len = size;
    if (message_len > size)
        message_len = size;
    size_t n = jail_reply_encode(out, cap, status, 7, 42, 2, text, layer_len, text, message_len,
                                 flags);
    if (n == 0)
        return;
    /* Only a ready reply may say a listener comes with it, and no other flag exists. */
    uint32_t said;
    memcpy(&said, out + JAIL_REPLY_HEAD - 4, sizeof said);
    if (said != flags || (flags & ~JAIL_REPLY_LISTENER) || (flags && status != JAIL_REPLY_READY))
        abort();
    if (n > cap || n != JAIL_REPLY_HEAD + layer_len + message_len || n > JAIL_REPLY_MAX)
        abort();
    if (status > JAIL_REPLY_FAILED || layer_len > JAIL_REPLY_MAX_LAYER)
        abort();
    if (memcmp(out + JAIL_REPLY_HEAD, text, layer_len) != 0 ||
        memcmp(out + JAIL_REPLY_HEAD + layer_len, text, message_len) != 0)
        abort();
}

static void check_idmap(const uint8_t *data, size_t size)
{
    char out[JAIL_IDMAP_MAX];
    uint32_t id = 0;
    if (size >= 4)
        memcpy(&id, data, 4);
    size_t cap = size > 4 ? data[4] % (sizeof out + 1) : sizeof out;
    const char *tmpl = size > 5 ? (const char *)data + 5 : "";
    size_t len = size > 5 ? size - 5 : 0;
    int n = jail_idmap_render(tmpl, len, id, out, cap);
    if (n < 0)
        return;
    if ((size_t)n >= cap || out[n] != 0 || strlen(out) != (size_t)n)
        abort();
    /* Every byte but a hole is copied; a hole becomes the digits of id. */
    size_t holes = 0;
    for (size_t i = 0; i < len; i++)
        holes += tmpl[i] == JAIL_IDMAP_HOLE;
    size_t digits = 1;
    for (uint32_t v = id; v >= 10; v /= 10)
        digits++;
    if ((size_t)n != len - holes + holes * digits)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_request(data, size);
    check_reply(data, size);
    check_idmap(data, size);
    return 0;
}
