/* The client BIO: the client socket as OpenSSL reads it, with the ClientHello bytes
 * the probe already read (wk_probe.c) served first, and the errno of the last
 * failed recv or send kept for the connection's record.
 *
 * Once the pump starts (wk_client_bio_coalesce), the records one SSL_write makes
 * (up to four of 16 KiB from a 64 KiB read of the backend) are gathered and sent
 * together by wk_client_bio_flush: one send and one segment on the wire where there
 * were four, which costs both ends less per megabyte.
 */
#include <errno.h>
#include <openssl/bio.h>
#include <string.h>
#include <sys/socket.h>

#include "wk_ssl.h"

/* Four full TLS records (16 KiB of data, at most 256 bytes of header, tag, padding). */
#define GATHER (4 * (16384 + 256))

struct client_io {
    int fd;
    const unsigned char *prefix;
    size_t len, off;
    int err;      /* errno of the last failed recv/send */
    int coalesce; /* writes are gathered in `out` until a flush */
    size_t out_start, out_end;
};

/* One connection per worker: one gather buffer. */
static unsigned char out[GATHER];

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

/* Send what is gathered: 1 all sent, 0 some left (the socket is full), -1 error. */
static int send_gathered(struct client_io *io)
{
    while (io->out_start < io->out_end) {
        ssize_t n = send(io->fd, out + io->out_start, io->out_end - io->out_start,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            io->out_start += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            return 0;
        } else {
            io->err = n < 0 ? errno : EPIPE;
            return -1;
        }
    }
    io->out_start = io->out_end = 0;
    return 1;
}

static int cio_write(BIO *b, const char *buf, int len)
{
    struct client_io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (io->coalesce) {
        if ((size_t)len > GATHER - io->out_end) {
            int r = send_gathered(io);
            if (r < 0)
                return -1;
            if (r == 0 || (size_t)len > GATHER) {
                BIO_set_retry_write(b); /* OpenSSL keeps the record and tries again */
                return -1;
            }
        }
        memcpy(out + io->out_end, buf, (size_t)len);
        io->out_end += (size_t)len;
        return len;
    }
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

void wk_client_bio_coalesce(BIO *b)
{
    struct client_io *io = BIO_get_data(b);
    io->coalesce = 1;
    io->out_start = io->out_end = 0;
}

int wk_client_bio_flush(BIO *b)
{
    return send_gathered(BIO_get_data(b));
}

size_t wk_client_bio_unsent(BIO *b)
{
    const struct client_io *io = BIO_get_data(b);
    return io->out_end - io->out_start;
}

int wk_client_bio_errno(BIO *b)
{
    const struct client_io *io = b != NULL ? BIO_get_data(b) : NULL;
    return io != NULL ? io->err : 0;
}

