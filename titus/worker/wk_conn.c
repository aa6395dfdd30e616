/* The connection path of one worker, from the client socket to _exit.
 *
 *  1. the Connection message from the supervisor brings the client socket and
 *     the connection's local address;
 *  2. the vhost is chosen by local address, then SNI, first match wins (wk_probe.c).
 *     Where the address alone decides (its first vhost takes every server name, as
 *     with one vhost), the real SSL is made on that vhost at once and its context's
 *     ClientHello callback reads the hello as the probe would (SSLv2's format and a
 *     server name that is no host name refused, the name kept for the reports).
 *     Otherwise a probe
 *     SSL on a parse-only context reads the ClientHello up to OpenSSL's ClientHello
 *     callback, which chooses and stops it; the real SSL is then created on the
 *     chosen vhost's SSL_CTX and fed the same bytes, so every setting of that vhost
 *     (versions, ciphers, groups, options, verify mode) applies as configured.
 *     (SSL_set_SSL_CTX in a callback would switch the certificate only: the rest
 *     was copied from the first context at SSL_new; copying each setting over by
 *     hand would be one more place to know every setting, and to miss one.)  The
 *     probe costs ~16 us of CPU a connection (measured: SSL_new on the probe context,
 *     a 517-byte ClientHello parsed up to the callback, SSL_free), ~2% of a worker's
 *     budget; 0.02-0.05 ms in a forked child, cold (bench/FLOOR.md), which is why the
 *     address alone decides where it can.  No vhost: an unrecognized_name alert from
 *     the probe;
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
#define MAX_HELLO 65536 /* a probe refuses a larger ClientHello (without one: OpenSSL's limit) */

/* ------------------------------------------------------------------ the connection */

struct conn {
    const struct wk_table *t;
    int cfd, bfd;
    struct wk_addr local;
    struct wk_probe probe;
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

/* A ClientHello a callback refused (wk_probe.c's read_hello), whichever read it. */
static int hello_refused(struct conn *c)
{
    if (c->probe.sni_state == -2)
        return fail(c, WK_HANDSHAKE_FAILED, "the server name is not a host name");
    if (c->probe.sni_state == -1)
        return fail(c, WK_HANDSHAKE_FAILED, "a malformed server_name extension");
    return fail(c, WK_HANDSHAKE_FAILED, "an SSLv2 ClientHello");
}

/* Choose the vhost, reading the ClientHello into `hello` if a probe must; 0 or -1
 * (outcome set). */
static int choose_vhost(struct conn *c, size_t *hello_len)
{
    BIO *in, *out;
    c->probe = (struct wk_probe){.t = c->t, .local = &c->local, .vhost = -1};
    int by_address = wk_choose_by_address(c->t, &c->local);
    if (by_address >= 0) { /* no server name can change it: no probe */
        c->probe.vhost = by_address;
        *hello_len = 0;
        return 0;
    }
    SSL *probe = wk_new_probe(c->t, &c->probe, &in, &out);
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
        r = wk_probe_step(probe, &c->probe);
        if (r < 0) {
            if (c->probe.refused) {
                hello_refused(c);
            } else if (c->probe.ran && c->probe.vhost < 0) {
                c->outcome = WK_NO_VHOST;
                no_vhost_detail(c);
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
    if (c->ssl == NULL || c->bio == NULL || wk_vhost_hello_attach(c->ssl, &c->probe) < 0) {
        BIO_free(c->bio);
        c->bio = NULL;
        return fail(c, WK_ERROR, "out of memory");
    }
    BIO_up_ref(c->bio); /* one reference for SSL_set_bio's rbio, one for its wbio */
    SSL_set_bio(c->ssl, c->bio, c->bio);
    SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                             SSL_MODE_RELEASE_BUFFERS);
    /* Read ahead: one recv takes what the client has sent, up to a record and a bit,
     * instead of a recv for each record's header and another for its body.  The
     * buffer stays at its default size: a 64 KiB one cost each idle connection 8 KiB
     * of PSS for no measurable gain (bench/FLOOR.md). */
    SSL_set_read_ahead(c->ssl, 1);
    SSL_set_accept_state(c->ssl);
    for (;;) {
        wk_err_clear();
        int r = SSL_do_handshake(c->ssl);
        if (r == 1)
            return 0;
        int e = SSL_get_error(c->ssl, r);
        /* Before its ClientHello was read (no probe ran: the address chose the vhost),
         * a connection ends as the probe would have ended it. */
        int before_hello = !c->probe.ran;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (wait_client(c, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT) < 0)
                return fail(c, WK_TIMEOUT,
                            before_hello ? "no ClientHello in time" : "handshake timed out");
            continue;
        }
        if (e == SSL_ERROR_SYSCALL) {
            int err = wk_client_bio_errno(c->bio);
            if (before_hello && err == ECONNRESET)
                return fail(c, WK_CLIENT_RESET, NULL);
            if (err == ECONNRESET || err == EPIPE)
                return fail(c, WK_HANDSHAKE_FAILED, "the client reset the connection");
            if (err == 0)
                return fail(c, WK_HANDSHAKE_FAILED,
                            before_hello ? "client closed before its ClientHello"
                                         : "client closed during the handshake");
            return fail(c, WK_HANDSHAKE_FAILED, strerror(err));
        }
        if (c->probe.refused)
            return hello_refused(c);
        if (before_hello)
            return ssl_fail(c, WK_HANDSHAKE_FAILED, "not a TLS ClientHello");
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
    /* The handshake's memory is freed now; the pump gives its pages back once the
     * connection goes quiet (wk_pump.c).  Pages of the heap are the worker's own: the
     * zygote keeps its free chunks and runs malloc without a thread cache
     * (sandbox/forkserver.py), so nothing freed here pins a page. */

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
