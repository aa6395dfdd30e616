/* Choosing the vhost before the handshake: a probe SSL on a parse-only context reads
 * the ClientHello up to OpenSSL's ClientHello callback, which reads the server name
 * and asks wk_choose (wk_choose.c); wk_conn.c then makes the real SSL on the chosen
 * vhost's SSL_CTX and feeds it the same bytes (it says why).
 */
#include <openssl/err.h>
#include <stdint.h>
#include <stdio.h>

#include "wk_ssl.h"

/* What every ClientHello callback checks: not SSLv2's format, and a server name (if
 * any) that is a host name, kept normalized in p.  1 accepted, 0 refused (*al set). */
static int read_hello(SSL *ssl, int *al, struct wk_probe *p)
{
    const unsigned char *ext;
    size_t len;
    char raw[WK_MAX_SNI + 1];
    p->ran = 1;
    if (SSL_client_hello_isv2(ssl)) {
        *al = SSL_AD_PROTOCOL_VERSION;
        p->refused = 1;
        return 0;
    }
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &len)) {
        int n = wk_parse_sni_ext(ext, len, raw, sizeof raw);
        if (n < 0) {
            p->sni_state = n;
            *al = n == -1 ? SSL_AD_DECODE_ERROR : SSL_AD_UNRECOGNIZED_NAME;
            p->refused = 1;
            return 0;
        }
        p->sni_state = 1;
        wk_normalize_sni(raw, (size_t)n, p->sni);
    }
    return 1;
}

static int probe_cb(SSL *ssl, int *al, void *arg)
{
    (void)arg;
    struct wk_probe *p = SSL_get_app_data(ssl);
    if (p == NULL || !read_hello(ssl, al, p))
        return SSL_CLIENT_HELLO_ERROR;
    p->vhost = wk_choose(p->t, p->local, p->sni);
    if (p->vhost < 0) {
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_RETRY; /* stop here: the real SSL takes over */
}

/* The real SSL's: a hello the probe read passes (the same bytes); where the local
 * address alone chose the vhost (wk_choose_by_address: no probe), the hello is read
 * here, as the probe would.  No connection attached (the zygote's warm-up, whose
 * SSLs are Python's): nothing to check. */
static int hello_index = -1;

static int vhost_hello_cb(SSL *ssl, int *al, void *arg)
{
    (void)arg;
    struct wk_probe *p = SSL_get_ex_data(ssl, hello_index);
    if (p == NULL || p->ran)
        return SSL_CLIENT_HELLO_SUCCESS;
    return read_hello(ssl, al, p) ? SSL_CLIENT_HELLO_SUCCESS : SSL_CLIENT_HELLO_ERROR;
}

int wk_vhost_hello_install(SSL_CTX *ctx)
{
    if (hello_index < 0)
        hello_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (hello_index < 0)
        return -1;
    SSL_CTX_set_client_hello_cb(ctx, vhost_hello_cb, NULL);
    return 0;
}

int wk_vhost_hello_attach(SSL *ssl, struct wk_probe *p)
{
    return SSL_set_ex_data(ssl, hello_index, p) == 1 ? 0 : -1;
}

SSL *wk_new_probe(const struct wk_table *t, struct wk_probe *p, BIO **in, BIO **out)
{
    SSL *ssl = SSL_new(t->probe);
    *in = BIO_new(BIO_s_mem());
    *out = BIO_new(BIO_s_mem());
    if (ssl == NULL || *in == NULL || *out == NULL) {
        SSL_free(ssl);
        BIO_free(*in);
        BIO_free(*out);
        return NULL;
    }
    SSL_set_bio(ssl, *in, *out);
    SSL_set_app_data(ssl, p);
    SSL_set_accept_state(ssl);
    return ssl;
}

/* 1: chosen; 0: needs more bytes; -1: failed (the probe's alert is in its wbio). */
int wk_probe_step(SSL *ssl, struct wk_probe *p)
{
    int r = SSL_do_handshake(ssl);
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_CLIENT_HELLO_CB && p->vhost >= 0)
        return 1;
    if (e == SSL_ERROR_WANT_READ)
        return 0;
    return -1;
}

int wk_probe_memory(const struct wk_table *t, const struct wk_addr *local,
                    const unsigned char *hello, size_t len, char *sni, size_t sni_cap)
{
    struct wk_probe p = {.t = t, .local = local, .vhost = -1};
    BIO *in, *out;
    SSL *ssl = wk_new_probe(t, &p, &in, &out);
    if (ssl == NULL || len > INT32_MAX)
        return -3;
    BIO_write(in, hello, (int)len);
    int r = wk_probe_step(ssl, &p);
    SSL_free(ssl);
    ERR_clear_error();
    if (sni != NULL && sni_cap > 0)
        snprintf(sni, sni_cap, "%s", p.sni_state == 1 ? p.sni : "");
    if (r == 0 || !p.ran)
        return -2;
    return r == 1 ? p.vhost : -1;
}

/* SSL_CTX_set_client_hello_cb on the probe context (built by _worker.c). */
void wk_probe_install(SSL_CTX *probe) { SSL_CTX_set_client_hello_cb(probe, probe_cb, NULL); }

