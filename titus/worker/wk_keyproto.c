/* The key-holder protocol, the worker's side (titus/keyproto.py is the reference).
 *
 *   request   version u8 | op u8     | key_id u16 | request_id u32 | length u32 | payload
 *   response  version u8 | status u8 | request_id u32 | length u32 | payload
 *
 * One frame per SOCK_SEQPACKET packet.  A request is sent and its answer awaited
 * within the channel's timeout; any failure (timeout, short or malformed answer,
 * another request's id, a refusal, EOF) breaks the channel for good, so a late
 * answer can never be taken for the next request's.  Pure C (no OpenSSL): the
 * libFuzzer harness links the decoder from here.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "wk.h"

struct wk_keychannel wk_kh = {.fd = -1, .timeout_ms = 2000, .broken = 0, .next_id = 1};

int64_t wk_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t wk_now_ms(void) { return wk_now_us() / 1000; }

static void be(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int wk_kp_encode_request(uint8_t op, uint16_t key_id, uint32_t request_id, const uint8_t *payload,
                         size_t len, uint8_t *buf, size_t cap)
{
    if (op < WK_KP_OP_RSA_RAW || op > WK_KP_OP_ECDSA || len > WK_KP_MAX_PAYLOAD ||
        cap < WK_KP_REQ_HEADER + len || (len > 0 && payload == NULL))
        return -1;
    buf[0] = WK_KP_VERSION;
    buf[1] = op;
    be(buf + 2, key_id, 2);
    be(buf + 4, request_id, 4);
    be(buf + 8, len, 4);
    if (len > 0)
        memcpy(buf + WK_KP_REQ_HEADER, payload, len);
    return (int)(WK_KP_REQ_HEADER + len);
}

int wk_kp_decode_response(const uint8_t *buf, size_t len, uint8_t *status, uint32_t *request_id,
                          const uint8_t **payload, size_t *payload_len)
{
    if (buf == NULL || len < WK_KP_RESP_HEADER)
        return -1;
    if (buf[0] != WK_KP_VERSION || buf[1] > WK_KP_STATUS_MAX)
        return -1;
    uint32_t n = get_be32(buf + 6);
    if (n > WK_KP_MAX_PAYLOAD || len != WK_KP_RESP_HEADER + (size_t)n)
        return -1;
    *status = buf[1];
    *request_id = get_be32(buf + 2);
    *payload = buf + WK_KP_RESP_HEADER;
    *payload_len = n;
    return 0;
}

/* Wait for `events` until the deadline; 0 when ready (or hung up: the I/O says how). */
static int wait_for(int fd, short events, int64_t deadline_ms)
{
    for (;;) {
        int64_t left = deadline_ms - wk_now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)(left > 60000 ? 60000 : left));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 || (p.revents & (POLLERR | POLLNVAL)))
            return -1;
        if (r > 0)
            return 0;
    }
}

static int call(uint8_t op, uint16_t key_id, const uint8_t *payload, size_t len, uint8_t *out,
                size_t cap)
{
    uint8_t req[WK_KP_REQ_HEADER + WK_KP_MAX_PAYLOAD];
    uint8_t resp[WK_KP_RESP_HEADER + WK_KP_MAX_PAYLOAD + 1];
    int64_t deadline = wk_now_ms() + wk_kh.timeout_ms;
    uint32_t id = wk_kh.next_id;
    wk_kh.next_id = wk_kh.next_id == 0xffffffffu ? 1 : wk_kh.next_id + 1;
    int n = wk_kp_encode_request(op, key_id, id, payload, len, req, sizeof req);
    if (n < 0)
        return -1;
    for (;;) {
        ssize_t s = send(wk_kh.fd, req, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (s == n)
            break;
        if (s >= 0 || (errno != EAGAIN && errno != EINTR))
            return -1;
        if (wait_for(wk_kh.fd, POLLOUT, deadline) < 0)
            return -1;
    }
    ssize_t got;
    for (;;) {
        if (wait_for(wk_kh.fd, POLLIN, deadline) < 0)
            return -1;
        got = recv(wk_kh.fd, resp, sizeof resp, MSG_DONTWAIT);
        if (got >= 0)
            break;
        if (errno != EAGAIN && errno != EINTR)
            return -1;
    }
    uint8_t status;
    uint32_t rid;
    const uint8_t *p;
    size_t plen;
    if (got == 0 || wk_kp_decode_response(resp, (size_t)got, &status, &rid, &p, &plen) < 0)
        return -1;
    if (rid != id || status != WK_KP_STATUS_OK || plen > cap)
        return -1;
    memcpy(out, p, plen);
    return (int)plen;
}

int wk_kp_call(uint8_t op, uint16_t key_id, const uint8_t *payload, size_t len, uint8_t *out,
               size_t cap)
{
    int r = -1;
    int64_t start = wk_now_us();
    if (wk_kh.fd >= 0 && !wk_kh.broken)
        r = call(op, key_id, payload, len, out, cap);
    if (r < 0)
        wk_kh.broken = 1;
    else
        wk_kh.last_us = wk_now_us() - start;
    return r;
}
