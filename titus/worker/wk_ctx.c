/* The callbacks the vhost contexts carry, in C: a worker never re-enters Python.
 *
 * ALPN: the vhost's server list (wire format, set by titus/worker/contexts.py);
 * the first of the server's protocols the client offers wins (the order Python's
 * ssl used); no overlap: no ALPN at all (NOACK), as before.
 * OCSP: a staple the zygote keeps per vhost (replaced there for later clones);
 * the callback hands libssl a copy unless it has expired by the worker's clock.
 * On any doubt it staples nothing: a missing staple costs the client one OCSP
 * query, a failed handshake costs the connection.
 */
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <string.h>
#include <time.h>

#include "wk_ssl.h"

struct alpn_list {
    size_t len;
    unsigned char wire[];
};

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    const struct alpn_list *list = arg;
    unsigned char *chosen = NULL;
    if (list == NULL || list->len == 0 || in == NULL || inlen == 0)
        return SSL_TLSEXT_ERR_NOACK;
    if (SSL_select_next_proto(&chosen, outlen, list->wire, (unsigned int)list->len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

int wk_set_alpn(SSL_CTX *ctx, const unsigned char *wire, size_t len)
{
    /* Well-formed: each name 1..255 bytes, the list exactly consumed. */
    if (len == 0 || len > 0xffff)
        return -1;
    for (size_t i = 0; i < len; i += 1 + (size_t)wire[i])
        if (wire[i] == 0 || i + 1 + wire[i] > len)
            return -1;
    /* Lives as long as the SSL_CTX, i.e. the zygote and its clones: never freed. */
    struct alpn_list *list = OPENSSL_malloc(sizeof *list + len);
    if (list == NULL)
        return -1;
    list->len = len;
    memcpy(list->wire, wire, len);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, list);
    return 0;
}

static int staple_now(SSL *ssl, void *arg)
{
    const struct wk_staple *staple = arg;
    if (staple == NULL || staple->der == NULL || staple->len == 0 || staple->len > INT32_MAX)
        return SSL_TLSEXT_ERR_NOACK;
    struct timespec now;
    if (staple->expires > 0 &&
        (clock_gettime(CLOCK_REALTIME, &now) != 0 || (double)now.tv_sec >= staple->expires))
        return SSL_TLSEXT_ERR_NOACK;
    unsigned char *copy = OPENSSL_malloc(staple->len);
    if (copy == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    memcpy(copy, staple->der, staple->len);
    if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)staple->len) != 1) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK; /* libssl owns the copy now */
}

int wk_enable_stapling(SSL_CTX *ctx, struct wk_staple *staple)
{
    if (SSL_CTX_set_tlsext_status_cb(ctx, staple_now) != 1 ||
        SSL_CTX_set_tlsext_status_arg(ctx, staple) != 1)
        return -1;
    return 0;
}

SSL_CTX *wk_new_probe_ctx(void)
{
    /* Only parses: the ClientHello callback stops every handshake on it.  It has
     * no certificate, key, tickets or cache, and no TLS setting of a vhost. */
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    ERR_clear_error();
    return ctx;
}
