/*
 * The fork server's wire formats (serve.h): the request decoder, the reply encoder,
 * and the id-map text made from a template.  No Python and no system calls: a fuzz
 * harness (tests/fuzz/c/fuzz_spawnreq.c) links this file alone.
 */
#include "serve.h"

#include <stdio.h>
#include <string.h>

/* The headers as they are on the wire (native byte order, no padding). */
struct wire_request {
    uint32_t magic;
    uint16_t version, kind;
    uint64_t id;
    uint32_t uid;
    uint16_t nfds, name_len;
};
struct wire_reply {
    uint32_t magic;
    uint16_t version, status;
    uint64_t id;
    int32_t pid, err;
    uint16_t layer_len, message_len;
    uint32_t flags;
};
_Static_assert(sizeof(struct wire_request) == JAIL_REQ_HEAD, "request header");
_Static_assert(sizeof(struct wire_reply) == JAIL_REPLY_HEAD, "reply header");

#define FAIL(...) (snprintf(why, whylen, __VA_ARGS__), -1)

int jail_request_decode(const void *buf, size_t len, struct jail_request *out, int *id_known,
                        char *why, size_t whylen)
{
    struct wire_request h;
    memset(out, 0, sizeof *out);
    *id_known = 0;
    if (len < sizeof h)
        return FAIL("a request of %zu bytes, shorter than its header", len);
    memcpy(&h, buf, sizeof h);
    if (h.magic != JAIL_REQ_MAGIC || h.version != JAIL_SERVE_VERSION)
        return FAIL("not a version %d fork server request", JAIL_SERVE_VERSION);
    *out = (struct jail_request){h.kind, h.id, h.uid, h.nfds, h.name_len, NULL};
    *id_known = 1;
    if (h.kind != JAIL_REQ_SPAWN && h.kind != JAIL_REQ_UPDATE)
        return FAIL("unknown request kind %u", h.kind);
    if (h.nfds > JAIL_REQ_MAX_FDS)
        return FAIL("%u fds, more than %d", h.nfds, JAIL_REQ_MAX_FDS);
    if (h.name_len == 0 || h.name_len > JAIL_REQ_MAX_NAME)
        return FAIL("a recipe name of %u bytes (1 to %d)", h.name_len, JAIL_REQ_MAX_NAME);
    if (len != sizeof h + h.name_len)
        return FAIL("%zu bytes for a name of %u", len, h.name_len);
    out->name = (const char *)buf + sizeof h;
    if (memchr(out->name, 0, h.name_len) != NULL)
        return FAIL("a NUL in the recipe name");
    if (h.kind == JAIL_REQ_SPAWN && h.uid == UINT32_MAX)
        return FAIL("uid -1");
    if (h.kind == JAIL_REQ_UPDATE && (h.uid != 0 || h.nfds != 1))
        return FAIL("an update carries one fd and no uid");
    return 0;
}

size_t jail_reply_encode(unsigned char *out, size_t cap, uint16_t status, uint64_t id, int32_t pid,
                         int32_t err, const char *layer, size_t layer_len, const char *message,
                         size_t message_len, uint32_t flags)
{
    if (status != JAIL_REPLY_READY && status != JAIL_REPLY_FAILED)
        return 0;
    if ((flags & ~JAIL_REPLY_LISTENER) != 0 || (flags && status != JAIL_REPLY_READY))
        return 0;
    if (layer_len > JAIL_REPLY_MAX_LAYER || message_len > JAIL_REPLY_MAX ||
        (layer_len && layer == NULL) || (message_len && message == NULL))
        return 0;
    size_t len = JAIL_REPLY_HEAD + layer_len + message_len;
    if (len > JAIL_REPLY_MAX || len > cap)
        return 0;
    struct wire_reply h = {JAIL_REPLY_MAGIC, JAIL_SERVE_VERSION, status, id, pid, err,
                           (uint16_t)layer_len, (uint16_t)message_len, flags};
    memcpy(out, &h, sizeof h);
    if (layer_len)
        memcpy(out + JAIL_REPLY_HEAD, layer, layer_len);
    if (message_len)
        memcpy(out + JAIL_REPLY_HEAD + layer_len, message, message_len);
    return len;
}

int jail_idmap_render(const char *tmpl, size_t len, uint32_t id, char *out, size_t cap)
{
    char buf[12];
    const char *digits = jail_decimal(id, buf, sizeof buf);
    size_t ndigits = strlen(digits), used = 0;
    if (cap == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (tmpl[i] == 0)
            return -1; /* a template is text */
        if (tmpl[i] != JAIL_IDMAP_HOLE) {
            if (cap - used < 2)
                return -1;
            out[used++] = tmpl[i];
            continue;
        }
        if (cap - used < ndigits + 1)
            return -1;
        memcpy(out + used, digits, ndigits);
        used += ndigits;
    }
    out[used] = 0;
    return (int)used;
}
