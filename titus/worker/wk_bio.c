/* The client BIO: the client socket as OpenSSL reads it, with the ClientHello bytes
 * the probe already read (wk_probe.c) served first, and the errno of the last
 * failed recv or send kept for the connection's record.  For the pump it also
 * says whether the last recv came back short, and sends with MSG_MORE while told
 * that another record follows at once.
 */
#include <errno.h>
#include <openssl/bio.h>
#include <string.h>
#include <sys/socket.h>

#include "wk_ssl.h"

struct client_io {
    int fd;
    const unsigned char *prefix;
    size_t len, off;
    int err;     /* errno of the last failed recv/send */
    int more;    /* the writer has more to send at once: MSG_MORE */
    int drained; /* the last recv came back short: the socket had nothing more */
};

static BIO_METHOD *client_method;

static int cio_read(BIO *b, char *buf, int len)
{
    struct client_io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    io->drained = 0;
    if (io->off < io->len) {
        size_t n = io->len - io->off < (size_t)len ? io->len - io->off : (size_t)len;
        memcpy(buf, io->prefix + io->off, n);
        io->off += n;
        return (int)n;
    }
    ssize_t n = recv(io->fd, buf, (size_t)len, MSG_DONTWAIT);
    if (n >= 0) {
        io->drained = n > 0 && n < len;
        return (int)n;
    }
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
    ssize_t n = send(io->fd, buf, (size_t)len,
                     MSG_DONTWAIT | MSG_NOSIGNAL | (io->more ? MSG_MORE : 0));
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

void wk_client_bio_more(BIO *b, int more)
{
    struct client_io *io = BIO_get_data(b);
    if (io != NULL)
        io->more = more;
}

int wk_client_bio_drained(BIO *b)
{
    const struct client_io *io = BIO_get_data(b);
    return io != NULL && io->drained;
}

int wk_client_bio_errno(BIO *b)
{
    const struct client_io *io = b != NULL ? BIO_get_data(b) : NULL;
    return io != NULL ? io->err : 0;
}

