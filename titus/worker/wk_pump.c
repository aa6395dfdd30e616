/* Moving bytes between the TLS client and the plain backend, both directions.
 *
 * Every socket is used non-blocking (MSG_DONTWAIT) and one poll() waits for
 * whatever blocks.  A half-close crosses the proxy both ways, once everything
 * before it has been delivered: the client's EOF (close_notify, or a TCP FIN:
 * the contexts set SSL_OP_IGNORE_UNEXPECTED_EOF) becomes SHUT_WR towards the
 * backend while the backend's answer still flows back; the backend's EOF becomes
 * close_notify + SHUT_WR towards the client while the client may still send.
 * Backpressure: a side is read only while the other side's buffer has room, so
 * a peer that never reads costs at most one buffer.  A read is written on at
 * once (the other socket is assumed writable until it says otherwise), so a
 * request or an answer costs no extra poll round; a side whose last read came
 * back short is not read again before poll says it has more (no read that only
 * says EAGAIN).  Records written back to back go out in one segment (MSG_MORE on
 * all but the last).
 *
 * A client that streams faster than the worker needs to relay it (a bulk upload) is
 * read in batches: once one round has taken BULK_ROUND bytes from it, poll waits
 * for BULK_LOWAT bytes (SO_RCVLOWAT) or BULK_WAIT_MS, whichever comes first, and a
 * round that takes less ends the batching.  Otherwise every record the client sends
 * finds the worker asleep and wakes it, and each wake-up of a process on another
 * core costs the sender's core an inter-processor interrupt (~10 us of the waker's
 * time in this kind of VM: bench/FLOOR.md).  Nothing waits longer than BULK_WAIT_MS
 * for it, and a connection that never sends that much in a round never batches.
 *
 * The handshake's memory is free by the time the pump starts.  A connection that
 * goes quiet for TRIM_IDLE_MS gives those pages back, once (malloc_trim: brk,
 * madvise), so that an idle one holds only what it uses; one that ends before
 * (most do) pays neither for the trim nor for faulting the pages in again.
 */
#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "wk_ssl.h"

#define BUF (64 * 1024)
#define TRIM_IDLE_MS 200
#define BULK_ROUND BUF            /* a round that filled the buffer: the client streams */
#define BULK_LOWAT (256 * 1024)   /* then wake for this much ... */
#define BULK_WAIT_MS 1            /* ... or after this long */

struct dir {
    unsigned char *p;
    size_t start, end;
};

static size_t pending(const struct dir *d) { return d->end - d->start; }

static void consumed(struct dir *d, size_t n)
{
    d->start += n;
    if (d->start == d->end)
        d->start = d->end = 0;
}

static void compact(struct dir *d)
{
    /* SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets a retried SSL_write see the bytes moved. */
    if (d->end == BUF && d->start > 0) {
        memmove(d->p, d->p + d->start, d->end - d->start);
        d->end -= d->start;
        d->start = 0;
    }
}

static int reset_or_eof(SSL *ssl)
{
    int err = wk_client_bio_errno(SSL_get_rbio(ssl));
    return err == 0 ? 0 : -1;
}

/* Returns the low-water mark now in force: unchanged if the kernel refused it. */
static int set_lowat(int fd, int current, int wanted)
{
    if (wanted == current || setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &wanted, sizeof wanted) < 0)
        return current;
    return wanted;
}

int wk_pump(SSL *ssl, int cfd, int bfd, uint64_t *bytes_in, uint64_t *bytes_out)
{
    static unsigned char c2b_buf[BUF], b2c_buf[BUF];
    struct dir c2b = {c2b_buf, 0, 0}, b2c = {b2c_buf, 0, 0};
    int client_open = 1, backend_open = 1; /* the side may still send */
    int backend_shut = 0, notified = 0, client_shut = 0;
    int c_rd = 1, c_wr = 1, b_rd = 1, b_wr = 1; /* assumed ready until told otherwise */
    int read_wants_write = 0, write_wants_read = 0;
    int trimmed = 0;
    int lowat = 1; /* the client socket's SO_RCVLOWAT */

    for (;;) {
        int progress;
        int read_client = 0;    /* this round tried the client */
        size_t round_in = 0;    /* and took this much from it */
        do {
            progress = 0;
            /* client -> c2b: every record already here, so that the backend gets them in
             * one send rather than one a record */
            while (client_open && c2b.end < BUF && (c_rd || SSL_has_pending(ssl)) &&
                   !(read_wants_write && !c_wr)) {
                size_t n = 0;
                read_client = 1;
                wk_err_clear();
                if (SSL_read_ex(ssl, c2b.p + c2b.end, BUF - c2b.end, &n)) {
                    c2b.end += n;
                    round_in += n;
                    *bytes_in += n;
                    read_wants_write = 0;
                    progress = 1;
                    /* all read, and the socket was empty at the last recv: another
                     * read would only say EAGAIN (a request's worth of system calls) */
                    if (!SSL_has_pending(ssl) && wk_client_bio_drained(SSL_get_rbio(ssl))) {
                        c_rd = 0;
                        break;
                    }
                    continue;
                } else {
                    switch (SSL_get_error(ssl, 0)) {
                    case SSL_ERROR_WANT_READ:
                        c_rd = 0;
                        read_wants_write = 0;
                        break;
                    case SSL_ERROR_WANT_WRITE: /* e.g. the answer to a KeyUpdate */
                        c_wr = 0;
                        read_wants_write = 1;
                        break;
                    case SSL_ERROR_ZERO_RETURN: /* close_notify, or a FIN */
                        client_open = 0;
                        progress = 1;
                        break;
                    case SSL_ERROR_SYSCALL:
                        if (reset_or_eof(ssl) < 0)
                            return WK_CLIENT_RESET;
                        client_open = 0;
                        progress = 1;
                        break;
                    default: /* the client's TLS session failed (alert sent or received) */
                        return WK_CLIENT_RESET;
                    }
                    break; /* out of the while: a read that did not return bytes */
                }
            }
            /* c2b -> backend */
            if (pending(&c2b) > 0 && b_wr) {
                ssize_t n = send(bfd, c2b.p + c2b.start, pending(&c2b), MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n > 0) {
                    consumed(&c2b, (size_t)n);
                    progress = 1;
                } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                    b_wr = 0;
                } else {
                    return WK_BACKEND_RESET;
                }
            }
            compact(&c2b);
            /* backend -> b2c */
            if (backend_open && b2c.end < BUF && b_rd) {
                ssize_t n = recv(bfd, b2c.p + b2c.end, BUF - b2c.end, MSG_DONTWAIT);
                if (n > 0) {
                    if ((size_t)n < BUF - b2c.end)
                        b_rd = 0; /* short: nothing more there now, poll says when */
                    b2c.end += (size_t)n;
                    progress = 1;
                } else if (n == 0) {
                    backend_open = 0;
                    progress = 1;
                } else if (errno == EAGAIN || errno == EINTR) {
                    b_rd = 0;
                } else {
                    return WK_BACKEND_RESET;
                }
            }
            /* b2c -> client */
            if (pending(&b2c) > 0 && c_wr && !(write_wants_read && !c_rd)) {
                size_t n = 0;
                wk_err_clear();
                /* More than a record's worth: another SSL_write follows at once, and the
                 * last one (MSG_MORE off) pushes them all out together. */
                wk_client_bio_more(SSL_get_wbio(ssl), pending(&b2c) > SSL3_RT_MAX_PLAIN_LENGTH);
                int wrote = SSL_write_ex(ssl, b2c.p + b2c.start, pending(&b2c), &n);
                wk_client_bio_more(SSL_get_wbio(ssl), 0);
                if (wrote) {
                    consumed(&b2c, n);
                    *bytes_out += n;
                    write_wants_read = 0;
                    progress = 1;
                } else {
                    int e = SSL_get_error(ssl, 0);
                    if (e == SSL_ERROR_WANT_WRITE) {
                        c_wr = 0;
                    } else if (e == SSL_ERROR_WANT_READ) {
                        c_rd = 0;
                        write_wants_read = 1;
                    } else {
                        return WK_CLIENT_RESET;
                    }
                }
            }
            compact(&b2c);
            /* half-closes, once everything before them is delivered */
            if (!client_open && pending(&c2b) == 0 && !backend_shut) {
                if (shutdown(bfd, SHUT_WR) < 0 && errno == ECONNRESET)
                    return WK_BACKEND_RESET;
                backend_shut = 1;
                progress = 1;
            }
            if (!backend_open && pending(&b2c) == 0 && !notified && c_wr) {
                wk_err_clear();
                if (SSL_shutdown(ssl) >= 0 || SSL_get_error(ssl, -1) != SSL_ERROR_WANT_WRITE)
                    notified = 1; /* sent (or failed: the FIN below still says it) */
                else
                    c_wr = 0;
                progress = 1;
            }
            if (notified && !client_shut) {
                if (shutdown(cfd, SHUT_WR) < 0 && errno == ECONNRESET)
                    return WK_CLIENT_RESET;
                client_shut = 1;
                progress = 1;
            }
            if (client_shut && backend_shut)
                return WK_OK;
        } while (progress);

        short cev = 0, bev = 0;
        if ((client_open && c2b.end < BUF && !read_wants_write) || write_wants_read)
            cev |= POLLIN;
        if (!c_wr && (pending(&b2c) > 0 || read_wants_write || (!backend_open && !notified)))
            cev |= POLLOUT;
        if (backend_open && b2c.end < BUF)
            bev |= POLLIN;
        if (pending(&c2b) > 0)
            bev |= POLLOUT;
        struct pollfd p[2] = {{.fd = cev ? cfd : -1, .events = cev},
                              {.fd = bev ? bfd : -1, .events = bev}};
        if (cev == 0 && bev == 0)
            return WK_ERROR; /* nothing can move any more: never spin */
        if (read_client)
            lowat = set_lowat(cfd, lowat, round_in >= BULK_ROUND ? BULK_LOWAT : 1);
        int batching = lowat > 1 && (cev & POLLIN);
        int ready = poll(p, 2, batching ? BULK_WAIT_MS : trimmed ? -1 : TRIM_IDLE_MS);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            return WK_ERROR;
        }
        if (ready == 0 && batching) {
            c_rd = 1; /* what came short of the mark: read it now */
            continue;
        }
        if (ready == 0) {
            malloc_trim(0);
            trimmed = 1;
            continue;
        }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
            c_rd = 1;
        if (p[0].revents & (POLLOUT | POLLHUP | POLLERR))
            c_wr = 1;
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR))
            b_rd = 1;
        if (p[1].revents & (POLLOUT | POLLHUP | POLLERR))
            b_wr = 1;
    }
}
