/* The control-message codec, the worker's side (the Python side is titus/control.py).
 *
 * One message is one SOCK_SEQPACKET packet: a type byte, then fixed fields, all
 * integers big-endian; strings are a length (u8, or u16 where noted) and bytes.
 * Every length is checked against the packet and against the field's limit; a
 * packet is accepted only if it is consumed exactly.  Pure C: no OpenSSL, no
 * Python, so the libFuzzer harness links this file alone.
 */
#include <string.h>

#include "wk.h"

static int printable(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] > 0x7e)
            return 0;
    return 1;
}

int wk_decode_sup(const uint8_t *buf, size_t len, struct wk_sup_msg *out)
{
    memset(out, 0, sizeof *out);
    if (buf == NULL || len < 1 || len > WK_CTL_MAX)
        return -1;
    out->type = buf[0];
    switch (buf[0]) {
    case WK_MSG_CONNECTION: {
        if (len < 2)
            return -1;
        size_t iplen = buf[1] == 4 ? 4 : buf[1] == 6 ? 16 : 0;
        if (iplen == 0 || len != 2 + iplen + 2)
            return -1;
        out->local.family = buf[1];
        memcpy(out->local.ip, buf + 2, iplen);
        out->local.port = (uint16_t)(buf[2 + iplen] << 8 | buf[3 + iplen]);
        return 0;
    }
    case WK_MSG_BACKEND_READY:
        return len == 1 ? 0 : -1;
    case WK_MSG_BACKEND_FAILED: {
        if (len < 2 || len != 2 + (size_t)buf[1])
            return -1;
        if (!printable((const char *)buf + 2, buf[1]))
            return -1;
        out->reason_len = buf[1];
        memcpy(out->reason, buf + 2, buf[1]);
        out->reason[buf[1]] = '\0';
        return 0;
    }
    default:
        return -1;
    }
}

struct writer {
    uint8_t *p;
    size_t cap, n;
    int bad;
};

static void put(struct writer *w, const void *src, size_t n)
{
    if (n == 0)
        return; /* an empty string may come with no pointer at all */
    if (w->bad || n > w->cap - w->n) {
        w->bad = 1;
        return;
    }
    memcpy(w->p + w->n, src, n);
    w->n += n;
}

static void put_u8(struct writer *w, uint8_t v) { put(w, &v, 1); }

static void put_be(struct writer *w, uint64_t v, int bytes)
{
    uint8_t b[8];
    for (int i = 0; i < bytes; i++)
        b[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    put(w, b, (size_t)bytes);
}

/* A string field: its length in `lenbytes` bytes, then the bytes; over `limit`
 * (or absent when it must be present) makes the whole encoding fail. */
static void put_str(struct writer *w, struct wk_str s, int lenbytes, int limit)
{
    if (s.len < 0 || s.len > limit || (s.len > 0 && s.p == NULL)) {
        w->bad = 1;
        return;
    }
    put_be(w, (uint64_t)s.len, lenbytes);
    put(w, s.p, (size_t)s.len);
}

int wk_encode_handshake(const struct wk_handshake_msg *m, uint8_t *buf, size_t cap)
{
    struct writer w = {buf, cap, 0, 0};
    int cert = m->client_subject.len >= 0;
    uint8_t flags = (uint8_t)((m->alpn.len >= 0 ? 1 : 0) | (m->sni.len >= 0 ? 2 : 0) |
                              (m->client_cn.len >= 0 ? 4 : 0) | (cert ? 8 : 0));
    put_u8(&w, WK_MSG_HANDSHAKE);
    put_be(&w, m->vhost, 2);
    put_be(&w, m->handshake_us, 4);
    put_u8(&w, flags);
    put_str(&w, m->version, 1, WK_MAX_VERSION);
    put_str(&w, m->cipher, 1, WK_MAX_CIPHER);
    if (flags & 1)
        put_str(&w, m->alpn, 1, WK_MAX_ALPN);
    if (flags & 2)
        put_str(&w, m->sni, 1, WK_MAX_SNI);
    if (flags & 4)
        put_str(&w, m->client_cn, 2, 4 * WK_MAX_CN);
    if (cert) {
        if (m->n_dns < 0 || m->n_dns > WK_MAX_SANS || m->n_uri < 0 || m->n_uri > WK_MAX_SANS)
            return -1;
        put_str(&w, m->client_subject, 2, 4 * WK_MAX_SUBJECT);
        put_u8(&w, (uint8_t)m->n_dns);
        for (int i = 0; i < m->n_dns; i++)
            put_str(&w, m->dns[i], 2, 4 * WK_MAX_DNS);
        put_u8(&w, (uint8_t)m->n_uri);
        for (int i = 0; i < m->n_uri; i++)
            put_str(&w, m->uri[i], 2, 4 * WK_MAX_URI);
    } else if (m->n_dns != 0 || m->n_uri != 0) {
        return -1;
    }
    return w.bad || w.n > WK_CTL_MAX ? -1 : (int)w.n;
}

int wk_encode_finished(const struct wk_finished_msg *m, uint8_t *buf, size_t cap)
{
    struct writer w = {buf, cap, 0, 0};
    uint8_t flags = (uint8_t)((m->sni.len >= 0 ? 1 : 0) | (m->detail.len >= 0 ? 2 : 0));
    put_u8(&w, WK_MSG_FINISHED);
    put_u8(&w, m->outcome);
    put_be(&w, m->vhost, 2);
    put_be(&w, m->bytes_in, 8);
    put_be(&w, m->bytes_out, 8);
    put_be(&w, m->signatures, 4);
    put_be(&w, m->signature_failures, 4);
    put_u8(&w, flags);
    if (flags & 1)
        put_str(&w, m->sni, 1, WK_MAX_SNI);
    if (flags & 2)
        put_str(&w, m->detail, 2, WK_MAX_DETAIL);
    return w.bad || w.n > WK_CTL_MAX ? -1 : (int)w.n;
}
