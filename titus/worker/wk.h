/* The per-connection worker of titus, in C: shared declarations.
 *
 * Python decides, C executes: the zygote (Python) builds the TLS contexts and a
 * worker table (vhosts in order, their SSL_CTXs, match rules, staples, timeouts);
 * a worker, cloned into its jail, runs wk_main() on that table and never returns
 * into Python.  Files, one job each:
 *   wk_control.c    the control-message codec (supervisor <-> worker), pure C
 *   wk_keyproto.c   the key-holder wire codec and the channel's request/answer, pure C
 *   wk_remotekey.c  RSA_METHOD / EC_KEY_METHOD that sign through the key holder
 *   wk_conn.c       the connection path: vhost choice, handshake, reports, backend
 *   wk_pump.c       moving bytes both ways with half-close and backpressure
 *   _worker.c       the Python glue used by the zygote and the tests
 */
#ifndef TITUS_WK_H
#define TITUS_WK_H

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ control messages */

#define WK_CTL_MAX 8192 /* the largest control packet either side sends */

/* supervisor -> worker */
#define WK_MSG_CONNECTION 0x01    /* + the client socket */
#define WK_MSG_BACKEND_READY 0x02 /* + the backend socket */
#define WK_MSG_BACKEND_FAILED 0x03
/* worker -> supervisor */
#define WK_MSG_HANDSHAKE 0x81
#define WK_MSG_FINISHED 0x82

/* Outcomes a worker reports (the supervisor's own ones start at 64). */
enum wk_outcome {
    WK_OK = 0,
    WK_HANDSHAKE_FAILED = 1,
    WK_NO_VHOST = 2,
    WK_BACKEND_FAILED = 3,
    WK_CLIENT_RESET = 4,
    WK_BACKEND_RESET = 5,
    WK_TIMEOUT = 6,
    WK_ERROR = 7,
};

struct wk_addr {
    uint8_t family; /* 4 or 6 */
    uint8_t ip[16]; /* 4 or 16 bytes used */
    uint16_t port;
};

/* A decoded supervisor -> worker message. */
struct wk_sup_msg {
    uint8_t type;
    struct wk_addr local; /* CONNECTION */
    uint8_t reason_len;   /* BACKEND_FAILED */
    char reason[256];     /* NUL-terminated, printable ASCII */
};

/* Strings carried by the worker's reports; `len` < 0 means absent. */
struct wk_str {
    const char *p;
    int len;
};

#define WK_MAX_SANS 16

struct wk_handshake_msg {
    uint16_t vhost;
    uint32_t handshake_us;
    struct wk_str version, cipher, alpn, sni;
    /* the verified client certificate: subject.len < 0 without one */
    struct wk_str client_cn, client_subject;
    int n_dns, n_uri;
    struct wk_str dns[WK_MAX_SANS], uri[WK_MAX_SANS];
};

struct wk_finished_msg {
    uint8_t outcome;
    uint16_t vhost; /* 0xffff: none chosen */
    uint64_t bytes_in, bytes_out;
    uint32_t signatures, signature_failures;
    struct wk_str sni, detail;
};

#define WK_NO_VHOST_INDEX 0xffff
#define WK_MAX_VERSION 32
#define WK_MAX_CIPHER 64
#define WK_MAX_ALPN 255
#define WK_MAX_SNI 255
#define WK_MAX_CN 256       /* characters, as the supervisor counts them */
#define WK_MAX_SUBJECT 1024
#define WK_MAX_DNS 253
#define WK_MAX_URI 1024
#define WK_SAN_BUDGET 2048  /* bytes of SANs in one HandshakeDone: those that fit are sent */
#define WK_MAX_DETAIL 512

/* Decoding returns 0 or -1 (anything malformed); encoding the length or -1. */
int wk_decode_sup(const uint8_t *buf, size_t len, struct wk_sup_msg *out);
int wk_encode_handshake(const struct wk_handshake_msg *m, uint8_t *buf, size_t cap);
int wk_encode_finished(const struct wk_finished_msg *m, uint8_t *buf, size_t cap);

/* ------------------------------------------------------------------ key-holder protocol */

#define WK_KP_VERSION 1
#define WK_KP_MAX_PAYLOAD 1024
#define WK_KP_REQ_HEADER 12
#define WK_KP_RESP_HEADER 10
#define WK_KP_OP_RSA_RAW 1
#define WK_KP_OP_RSA_PKCS1 2
#define WK_KP_OP_ECDSA 3
#define WK_KP_STATUS_OK 0
#define WK_KP_STATUS_MAX 4

int wk_kp_encode_request(uint8_t op, uint16_t key_id, uint32_t request_id, const uint8_t *payload,
                         size_t len, uint8_t *buf, size_t cap);
/* One response packet: exactly one frame.  Sets status, request id and the payload
 * (pointing into buf).  0 or -1. */
int wk_kp_decode_response(const uint8_t *buf, size_t len, uint8_t *status, uint32_t *request_id,
                          const uint8_t **payload, size_t *payload_len);

/* The worker's channel: fd and timeout, set at entry; a failure breaks it for good. */
struct wk_keychannel {
    int fd;
    int timeout_ms;
    int broken;
    uint32_t next_id;
    uint32_t ok, failed; /* signatures, for the Finished report */
    int64_t last_us;     /* the round trip of the last answered request (the bench) */
};
extern struct wk_keychannel wk_kh;

/* Send one request and wait for its answer; copies at most `cap` bytes of an OK
 * answer to out and returns its length, or -1 (and the channel is broken). */
int wk_kp_call(uint8_t op, uint16_t key_id, const uint8_t *payload, size_t len, uint8_t *out,
               size_t cap);

/* ------------------------------------------------------------------ time */

int64_t wk_now_ms(void);
int64_t wk_now_us(void);

#endif
