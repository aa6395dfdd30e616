/* The connection path of one worker, from the client socket to _exit.
 *
 *  1. the Connection message from the supervisor brings the client socket and
 *     the connection's local address;
 *  2. the vhost is chosen by local address, then SNI, first match wins.  A probe
 *     SSL on a parse-only context reads the ClientHello up to OpenSSL's ClientHello
 *     callback, which chooses and stops it; the real SSL is then created on the
 *     chosen vhost's SSL_CTX and fed the same bytes, so every setting of that vhost
 *     (versions, ciphers, groups, options, verify mode) applies as configured.
 *     (SSL_set_SSL_CTX in a callback would switch the certificate only: the rest
 *     was copied from the first context at SSL_new; copying each setting over by
 *     hand would be one more place to know every setting, and to miss one.)  The
 *     probe costs ~16 us of CPU a connection (measured: SSL_new on the probe context,
 *     a 517-byte ClientHello parsed up to the callback, SSL_free), ~2% of a worker's
 *     budget.  No vhost: an unrecognized_name alert from the probe;
 *  3. the handshake, signatures by the key holder (wk_remotekey.c);
 *  4. HandshakeDone to the supervisor, which answers with the backend socket;
 *  5. the pump (wk_pump.c), then Finished, then _exit.
 * Nothing here decides policy: the table says which vhost has which rules.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wk_ssl.h"

#define CTL_FD 0
#define KEYHOLDER_FD 1
#define MAX_HELLO 65536 /* a ClientHello larger than this is refused */

/* ------------------------------------------------------------------ the probe */

struct probe {
    const struct wk_table *t;
    const struct wk_addr *local;
    int ran;       /* the callback ran */
    int vhost;     /* chosen, or -1 */
    int sni_state; /* 0 none, 1 present, -1 malformed, -2 unusable */
    char sni[WK_MAX_SNI + 1]; /* normalized */
};

static int probe_cb(SSL *ssl, int *al, void *arg)
{
    (void)arg;
    struct probe *p = SSL_get_app_data(ssl);
    const unsigned char *ext;
    size_t len;
    char raw[WK_MAX_SNI + 1];
    if (p == NULL)
        return SSL_CLIENT_HELLO_ERROR;
    p->ran = 1;
    if (SSL_client_hello_isv2(ssl)) {
        *al = SSL_AD_PROTOCOL_VERSION;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &len)) {
        int n = wk_parse_sni_ext(ext, len, raw, sizeof raw);
        if (n < 0) {
            p->sni_state = n;
            *al = n == -1 ? SSL_AD_DECODE_ERROR : SSL_AD_UNRECOGNIZED_NAME;
            return SSL_CLIENT_HELLO_ERROR;
        }
        p->sni_state = 1;
        wk_normalize_sni(raw, (size_t)n, p->sni);
    }
    p->vhost = wk_choose(p->t, p->local, p->sni);
    if (p->vhost < 0) {
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_RETRY; /* stop here: the real SSL takes over */
}

static SSL *new_probe(const struct wk_table *t, struct probe *p, BIO **in, BIO **out)
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
static int probe_step(SSL *ssl, struct probe *p)
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
    struct probe p = {.t = t, .local = local, .vhost = -1};
    BIO *in, *out;
    SSL *ssl = new_probe(t, &p, &in, &out);
    if (ssl == NULL || len > INT32_MAX)
        return -3;
    BIO_write(in, hello, (int)len);
    int r = probe_step(ssl, &p);
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

/* ------------------------------------------------------------------ the client BIO */

struct client_io {
    int fd;
    const unsigned char *prefix;
    size_t len, off;
    int err; /* errno of the last failed recv/send */
};

static BIO_METHOD *client_method;

static int cio_read(BIO *b, char *buf, int len)
{
    struct client_io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (io->off < io->len) {
        size_t n = io->len - io->off < (size_t)len ? io->len - io->off : (size_t)len;
        memcpy(buf, io->prefix + io->off, n);
        io->off += n;
        return (int)n;
    }
    ssize_t n = recv(io->fd, buf, (size_t)len, MSG_DONTWAIT);
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EINTR)
        BIO_set_retry_read(b);
    else
        io->err = errno;
    return -1;
}

static int cio_write(BIO *b, const char *buf, int len)
{
    struct client_io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    ssize_t n = send(io->fd, buf, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EINTR)
        BIO_set_retry_write(b);
    else
        io->err = errno;
    return -1;
}

static long cio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int cio_destroy(BIO *b)
{
    OPENSSL_free(BIO_get_data(b));
    BIO_set_data(b, NULL);
    return 1;
}

BIO *wk_client_bio(int fd, const unsigned char *prefix, size_t len)
{
    if (client_method == NULL) {
        BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "titus client");
        if (m == NULL || !BIO_meth_set_read(m, cio_read) || !BIO_meth_set_write(m, cio_write) ||
            !BIO_meth_set_ctrl(m, cio_ctrl) || !BIO_meth_set_destroy(m, cio_destroy)) {
            BIO_meth_free(m);
            return NULL;
        }
        client_method = m;
    }
    struct client_io *io = OPENSSL_zalloc(sizeof *io);
    BIO *b = BIO_new(client_method);
    if (io == NULL || b == NULL) {
        OPENSSL_free(io);
        BIO_free(b);
        return NULL;
    }
    io->fd = fd;
    io->prefix = prefix;
    io->len = len;
    BIO_set_data(b, io);
    BIO_set_init(b, 1);
    return b;
}

int wk_client_bio_errno(BIO *b)
{
    const struct client_io *io = b != NULL ? BIO_get_data(b) : NULL;
    return io != NULL ? io->err : 0;
}

/* ------------------------------------------------------------------ the connection */

struct conn {
    const struct wk_table *t;
    int cfd, bfd;
    struct wk_addr local;
    struct probe probe;
    int64_t start_us, deadline_ms;
    SSL *ssl;
    BIO *bio;
    uint64_t bytes_in, bytes_out;
    int outcome;
    char detail[WK_MAX_DETAIL + 1];
};

static unsigned char hello[MAX_HELLO];

static int fail(struct conn *c, int outcome, const char *detail)
{
    c->outcome = outcome;
    snprintf(c->detail, sizeof c->detail, "%s", detail != NULL ? detail : "");
    return -1;
}

static int ssl_fail(struct conn *c, int outcome, const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    return fail(c, outcome, reason != NULL ? reason : fallback);
}

/* Wait for the client socket; 0 ready, -1 the handshake deadline passed. */
static int wait_client(struct conn *c, short events)
{
    for (;;) {
        int64_t left = c->deadline_ms - wk_now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {.fd = c->cfd, .events = events};
        int r = poll(&p, 1, (int)(left > 60000 ? 60000 : left));
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

static void send_all(int fd, const unsigned char *p, size_t n, int64_t deadline_ms)
{
    while (n > 0) {
        ssize_t s = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (s > 0) {
            p += s;
            n -= (size_t)s;
            continue;
        }
        int64_t left = deadline_ms - wk_now_ms();
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        if (s == 0 || (errno != EAGAIN && errno != EINTR) || left <= 0 ||
            poll(&pf, 1, (int)left) <= 0)
            return;
    }
}

static void no_vhost_detail(struct conn *c)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(c->local.family == 4 ? AF_INET : AF_INET6, c->local.ip, ip, sizeof ip);
    snprintf(c->detail, sizeof c->detail, "no vhost for %s:%u sni=%s", ip,
             (unsigned)c->local.port, c->probe.sni_state == 1 ? c->probe.sni : "None");
}

/* Read the ClientHello into `hello` and choose the vhost; 0 or -1 (outcome set). */
static int choose_vhost(struct conn *c, size_t *hello_len)
{
    BIO *in, *out;
    c->probe = (struct probe){.t = c->t, .local = &c->local, .vhost = -1};
    SSL *probe = new_probe(c->t, &c->probe, &in, &out);
    size_t len = 0;
    int r = 0;
    if (probe == NULL)
        return fail(c, WK_ERROR, "out of memory");
    while (r == 0) {
        if (len == sizeof hello) {
            r = fail(c, WK_HANDSHAKE_FAILED, "ClientHello too large");
            break;
        }
        ssize_t n = recv(c->cfd, hello + len, sizeof hello - len, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_client(c, POLLIN) < 0)
                r = fail(c, WK_TIMEOUT, "no ClientHello in time");
            continue;
        }
        if (n < 0) {
            r = errno == ECONNRESET ? fail(c, WK_CLIENT_RESET, NULL)
                                    : fail(c, WK_HANDSHAKE_FAILED, strerror(errno));
            break;
        }
        if (n == 0) {
            r = fail(c, WK_HANDSHAKE_FAILED, "client closed before its ClientHello");
            break;
        }
        BIO_write(in, hello + len, (int)n);
        len += (size_t)n;
        r = probe_step(probe, &c->probe);
        if (r < 0) {
            if (c->probe.ran && c->probe.sni_state >= 0 && c->probe.vhost < 0) {
                c->outcome = WK_NO_VHOST;
                no_vhost_detail(c);
            } else if (c->probe.sni_state == -2) {
                fail(c, WK_HANDSHAKE_FAILED, "the server name is not a host name");
            } else {
                ssl_fail(c, WK_HANDSHAKE_FAILED, "not a TLS ClientHello");
            }
            /* The probe's alert (unrecognized_name, decode_error, ...) to the client. */
            const unsigned char *alert;
            long alen = BIO_get_mem_data(out, (char **)&alert);
            if (alen > 0)
                send_all(c->cfd, alert, (size_t)alen, wk_now_ms() + 1000);
        }
    }
    SSL_free(probe);
    ERR_clear_error();
    *hello_len = len;
    return r > 0 ? 0 : -1;
}

static int handshake(struct conn *c, size_t hello_len)
{
    const struct wk_vhost *v = &c->t->v[c->probe.vhost];
    c->ssl = SSL_new(v->ctx);
    c->bio = wk_client_bio(c->cfd, hello, hello_len);
    if (c->ssl == NULL || c->bio == NULL) {
        BIO_free(c->bio);
        c->bio = NULL;
        return fail(c, WK_ERROR, "out of memory");
    }
    BIO_up_ref(c->bio); /* one reference for SSL_set_bio's rbio, one for its wbio */
    SSL_set_bio(c->ssl, c->bio, c->bio);
    SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                             SSL_MODE_RELEASE_BUFFERS);
    SSL_set_accept_state(c->ssl);
    for (;;) {
        ERR_clear_error();
        int r = SSL_do_handshake(c->ssl);
        if (r == 1)
            return 0;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (wait_client(c, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT) < 0)
                return fail(c, WK_TIMEOUT, "handshake timed out");
            continue;
        }
        if (e == SSL_ERROR_SYSCALL) {
            int err = wk_client_bio_errno(c->bio);
            if (err == ECONNRESET || err == EPIPE)
                return fail(c, WK_HANDSHAKE_FAILED, "the client reset the connection");
            if (err == 0)
                return fail(c, WK_HANDSHAKE_FAILED, "client closed during the handshake");
            return fail(c, WK_HANDSHAKE_FAILED, strerror(err));
        }
        /* The alert OpenSSL queued went out through the BIO already (or could not). */
        if (wk_kh.failed > 0)
            return fail(c, WK_HANDSHAKE_FAILED,
                        "the key holder refused or did not answer the signature");
        unsigned long err = ERR_peek_last_error();
        if (ERR_GET_LIB(err) == ERR_LIB_SSL &&
            ERR_GET_REASON(err) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
            /* which check failed: "certificate revoked", "unable to get local issuer ..." */
            long verify = SSL_get_verify_result(c->ssl);
            c->outcome = WK_HANDSHAKE_FAILED;
            snprintf(c->detail, sizeof c->detail, "%s: %s", ERR_reason_error_string(err),
                     X509_verify_cert_error_string(verify));
            return -1;
        }
        return ssl_fail(c, WK_HANDSHAKE_FAILED, "handshake failed");
    }
}

static struct wk_str str_of(const char *s)
{
    return (struct wk_str){s, s != NULL ? (int)strlen(s) : -1};
}

static void report_handshake(struct conn *c, int ctl)
{
    static uint8_t buf[WK_CTL_MAX];
    static char names[WK_CTL_MAX];
    const unsigned char *alpn = NULL;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    const SSL_CIPHER *cipher = SSL_get_current_cipher(c->ssl);
    int64_t us = wk_now_us() - c->start_us;
    struct wk_handshake_msg m = {
        .vhost = (uint16_t)c->probe.vhost,
        .handshake_us = (uint32_t)(us > 0xffffffff ? 0xffffffff : us),
        .version = str_of(SSL_get_version(c->ssl)),
        .cipher = str_of(cipher != NULL ? SSL_CIPHER_get_name(cipher) : ""),
        .alpn = {(const char *)alpn, alpn != NULL && alpn_len > 0 ? (int)alpn_len : -1},
        .sni = {c->probe.sni, c->probe.sni_state == 1 ? (int)strlen(c->probe.sni) : -1},
    };
    wk_client_identity(c->ssl, &m, names, sizeof names);
    int n = wk_encode_handshake(&m, buf, sizeof buf);
    if (n > 0)
        send(ctl, buf, (size_t)n, MSG_NOSIGNAL);
}

/* One control packet and at most one fd; returns its length, 0 on EOF, -1 error. */
static ssize_t recv_ctl(int ctl, uint8_t *buf, size_t cap, int *fd)
{
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } cm;
    struct iovec iov = {buf, cap};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cm,
                         .msg_controllen = sizeof cm};
    *fd = -1;
    ssize_t n;
    do
        n = recvmsg(ctl, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    for (struct cmsghdr *h = n >= 0 ? CMSG_FIRSTHDR(&msg) : NULL; h != NULL;
         h = CMSG_NXTHDR(&msg, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int got;
            memcpy(&got, CMSG_DATA(h) + i * sizeof(int), sizeof got);
            if (*fd < 0)
                *fd = got;
            else
                close(got);
        }
    }
    if (n > 0 && (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
        n = -1;
    return n;
}

static void goodbye(struct conn *c)
{
    /* close_notify when there is no backend; the client may read it or not. */
    if (SSL_shutdown(c->ssl) < 0) {
        struct pollfd p = {.fd = c->cfd, .events = POLLOUT};
        if (poll(&p, 1, 1000) > 0)
            SSL_shutdown(c->ssl);
    }
}

static void serve(struct conn *c, int ctl)
{
    size_t hello_len = 0;
    c->deadline_ms = c->start_us / 1000 + c->t->handshake_timeout_ms;
    if (choose_vhost(c, &hello_len) < 0 || handshake(c, hello_len) < 0)
        return;
    report_handshake(c, ctl);

    uint8_t buf[WK_CTL_MAX];
    struct wk_sup_msg msg;
    int fd = -1;
    ssize_t n = recv_ctl(ctl, buf, sizeof buf, &fd);
    if (n <= 0 || wk_decode_sup(buf, (size_t)n, &msg) < 0 ||
        (msg.type != WK_MSG_BACKEND_READY && msg.type != WK_MSG_BACKEND_FAILED) ||
        (msg.type == WK_MSG_BACKEND_READY) != (fd > 2)) {
        if (fd >= 0)
            close(fd);
        goodbye(c);
        fail(c, WK_BACKEND_FAILED, n == 0 ? "supervisor" : "no backend");
        return;
    }
    if (msg.type == WK_MSG_BACKEND_FAILED) {
        goodbye(c);
        fail(c, WK_BACKEND_FAILED, msg.reason);
        return;
    }
    c->bfd = fd;
    c->outcome = wk_pump(c->ssl, c->cfd, c->bfd, &c->bytes_in, &c->bytes_out);
}

static void reseed(void)
{
    /* OpenSSL 3 reseeds on its own when it sees a new pid, but every worker is PID 1
     * of its namespace: reseed the primary DRBG from the kernel, and its children
     * with this clone's own additional input, before any random byte is drawn. */
    struct {
        int64_t now;
        const void *stack;
        pid_t pid;
    } adin = {wk_now_us(), &adin, getpid()};
    RAND_poll();
    EVP_RAND_CTX *drbgs[2] = {RAND_get0_public(NULL), RAND_get0_private(NULL)};
    for (int i = 0; i < 2; i++)
        if (drbgs[i] != NULL)
            EVP_RAND_reseed(drbgs[i], 0, NULL, 0, (const unsigned char *)&adin, sizeof adin);
}

/* One control packet and at most one fd, waiting; 0 EOF, -1 error (for wrappers). */
ssize_t wk_recv_ctl(int ctl, uint8_t *buf, size_t cap, int *fd)
{
    return recv_ctl(ctl, buf, cap, fd);
}

noreturn void wk_serve(const struct wk_table *t, const uint8_t *packet, size_t len, int cfd)
{
    static struct conn c;
    uint8_t buf[WK_CTL_MAX];
    struct wk_sup_msg msg;

    wk_kh = (struct wk_keychannel){.fd = KEYHOLDER_FD, .timeout_ms = t->keyholder_timeout_ms,
                                   .next_id = 1};
    if (cfd <= 2 || wk_decode_sup(packet, len, &msg) < 0 || msg.type != WK_MSG_CONNECTION)
        _exit(0); /* not a connection: the supervisor retired this idle worker */
    c = (struct conn){.t = t, .cfd = cfd, .bfd = -1, .local = msg.local, .start_us = wk_now_us(),
                      .outcome = WK_OK};
    reseed();
    serve(&c, CTL_FD);

    struct wk_finished_msg fin = {
        .outcome = (uint8_t)c.outcome,
        .vhost = c.probe.vhost >= 0 ? (uint16_t)c.probe.vhost : WK_NO_VHOST_INDEX,
        .bytes_in = c.bytes_in,
        .bytes_out = c.bytes_out,
        .signatures = wk_kh.ok,
        .signature_failures = wk_kh.failed,
        .sni = {c.probe.sni, c.probe.sni_state == 1 ? (int)strlen(c.probe.sni) : -1},
        .detail = {c.detail, c.detail[0] != '\0' ? (int)strlen(c.detail) : -1},
    };
    int n = wk_encode_finished(&fin, buf, sizeof buf);
    if (n > 0)
        send(CTL_FD, buf, (size_t)n, MSG_NOSIGNAL);
    _exit(0);
}

noreturn void wk_main(const struct wk_table *t)
{
    uint8_t buf[WK_CTL_MAX];
    int fd = -1;
    ssize_t n = recv_ctl(CTL_FD, buf, sizeof buf, &fd);
    wk_serve(t, buf, n > 0 ? (size_t)n : 0, fd);
}
