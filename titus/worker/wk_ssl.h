/* The worker's OpenSSL-facing declarations: the table the zygote builds, the
 * remote keys, the callbacks the contexts carry, the connection path. */
#ifndef TITUS_WK_SSL_H
#define TITUS_WK_SSL_H

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdnoreturn.h>
#include <sys/types.h>

#include "wk.h"

/* What a vhost's workers staple: the DER response and its expiry (wall clock,
 * seconds; 0 = none).  Replaced in the zygote for later clones. */
struct wk_staple {
    unsigned char *der;
    size_t len;
    double expires;
};

struct wk_vhost {
    SSL_CTX *ctx; /* one reference held by the table */
    int has_addr;
    struct wk_addr addr; /* family + ip; port below */
    int has_port;
    uint16_t port;
    int n_sni; /* 0: any server name */
    char **sni; /* patterns as configured: exact, "*.example.com", "" = no SNI */
    int stapling;
    struct wk_staple staple;
};

struct wk_table {
    int n;
    struct wk_vhost *v;
    SSL_CTX *probe; /* parses ClientHellos, up to the ClientHello callback */
    int handshake_timeout_ms;
    int keyholder_timeout_ms;
};

/* remote keys (wk_remotekey.c); returns the signature size, or -1 with `err` set */
int wk_install_key(SSL_CTX *ctx, const unsigned char *const *ders, const size_t *der_lens,
                   int n_ders, int is_rsa, const unsigned char *pub, size_t pub_len,
                   const unsigned char *exp, size_t exp_len, int curve_nid, uint16_t key_id,
                   char *err, size_t errlen);

/* callbacks the contexts carry (wk_ctx.c) */
int wk_set_alpn(SSL_CTX *ctx, const unsigned char *wire, size_t len);
int wk_enable_stapling(SSL_CTX *ctx, struct wk_staple *staple);
SSL_CTX *wk_new_probe_ctx(void);
void wk_probe_install(SSL_CTX *probe); /* its ClientHello callback (wk_probe.c) */
/* A vhost context's ClientHello callback (wk_probe.c): where no probe ran, it reads the
 * hello as the probe would; -1 if OpenSSL had no ex_data index for it. */
int wk_vhost_hello_install(SSL_CTX *ctx);

/* One probe: what its ClientHello callback found (wk_probe.c). */
struct wk_probe {
    const struct wk_table *t;
    const struct wk_addr *local;
    int ran;       /* a ClientHello callback read the hello (the probe's, or the vhost's) */
    int refused;   /* ... and refused it (SSLv2's format, or the server name) */
    int vhost;     /* chosen, or -1 */
    int sni_state; /* 0 none, 1 present, -1 malformed, -2 unusable */
    char sni[WK_MAX_SNI + 1]; /* normalized */
};
SSL *wk_new_probe(const struct wk_table *t, struct wk_probe *p, BIO **in, BIO **out);
int wk_vhost_hello_attach(SSL *ssl, struct wk_probe *p); /* 0, or -1 out of memory */
/* 1: chosen; 0: needs more bytes; -1: failed (the probe's alert is in its wbio). */
int wk_probe_step(SSL *ssl, struct wk_probe *p);

/* vhost choice (wk_conn.c) */
void wk_normalize_sni(const char *in, size_t len, char *out /* >= len + 1 */);
int wk_choose(const struct wk_table *t, const struct wk_addr *local, const char *sni);
/* The vhost when the local address alone decides it (its first vhost takes every
 * server name), else -1: the choice needs the ClientHello (or no vhost serves it). */
int wk_choose_by_address(const struct wk_table *t, const struct wk_addr *local);
/* The SNI extension as OpenSSL collected it -> the name (NUL-terminated, raw), or
 * -1 malformed (decode_error), -2 unusable name (unrecognized_name). */
int wk_parse_sni_ext(const unsigned char *ext, size_t len, char *out, size_t cap);
/* Run the probe on ClientHello bytes in memory (the zygote's warm-up, tests):
 * the vhost index, -1 none matches, -2 not a complete ClientHello. */
int wk_probe_memory(const struct wk_table *t, const struct wk_addr *local,
                    const unsigned char *hello, size_t len, char *sni, size_t sni_cap);

/* the connection path (wk_conn.c): fds 0 control, 1 key holder, 2 stderr.  wk_main
 * waits for the Connection message; wk_serve takes one already received (a wrapper's,
 * e.g. the tests' rogue workers, which read it first). */
noreturn void wk_main(const struct wk_table *t);
noreturn void wk_serve(const struct wk_table *t, const uint8_t *packet, size_t len, int cfd);
ssize_t wk_recv_ctl(int ctl, uint8_t *buf, size_t cap, int *fd);

/* the client certificate's identity (wk_identity.c), into `m`; names kept in `arena` */
void wk_identity(X509 *cert, struct wk_handshake_msg *m, char *arena, size_t cap);
void wk_client_identity(SSL *ssl, struct wk_handshake_msg *m, char *arena, size_t cap);

/* Empties the thread's error queue before an SSL call (SSL_get_error reads it).  It
 * is nearly always empty already: peeking reads two indices, while ERR_clear_error
 * rewrites all 16 slots, about 20 cache lines that are cold in a worker just switched
 * in (it was the worker's costliest libcrypto symbol per kept-alive request). */
static inline void wk_err_clear(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* the pump (wk_pump.c): 0 both directions closed cleanly, or the outcome */
int wk_pump(SSL *ssl, int cfd, int bfd, uint64_t *bytes_in, uint64_t *bytes_out);

/* the BIO over the client socket, replaying a prefix first (wk_bio.c) */
BIO *wk_client_bio(int fd, const unsigned char *prefix, size_t len);
int wk_client_bio_errno(BIO *b);
/* While set, the BIO's sends carry MSG_MORE: the kernel holds a record until the next
 * send without it, so that records written back to back leave in one segment. */
void wk_client_bio_more(BIO *b, int more);
/* Whether the BIO's last recv returned less than it asked for: the socket was empty
 * then, so another recv would only say EAGAIN (poll says when more comes). */
int wk_client_bio_drained(BIO *b);

#endif
