/* The verified client certificate's identity, as a worker reports it in HandshakeDone:
 * its subject CN, its subject as RFC 4514, its DNS and URI SANs.  The worker only
 * reports; the supervisor decides (titus/supervisor/clientid.py) and logs.
 *
 * Nothing unverified is reported: only a certificate the client sent, on a vhost
 * that verifies (SSL_VERIFY_PEER), with OpenSSL's verdict X509_V_OK (a failed
 * verification has ended the handshake already).  The rendering is the one the
 * Python worker had (getpeercert): the first commonName; the subject's RDNs last
 * first, attribute names short where RFC 4514 has one (else OpenSSL's long name),
 * values escaped as RFC 4514 §2.4 says; SANs in certificate order, as many as fit
 * (WK_SAN_BUDGET bytes, WK_MAX_SANS of each kind), a SAN that is not UTF-8 left
 * out.  Lengths are cut at whole characters: CN 256, subject 1024, DNS 253, URI 1024.
 */
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <string.h>

#include "wk_ssl.h"

struct arena {
    char *p;
    size_t cap, n;
};

/* Append and return a wk_str pointing into the arena ({NULL, -1} if it is full). */
static struct wk_str keep(struct arena *a, const char *s, size_t len)
{
    if (len > a->cap - a->n)
        return (struct wk_str){NULL, -1};
    memcpy(a->p + a->n, s, len);
    struct wk_str out = {a->p + a->n, (int)len};
    a->n += len;
    return out;
}

/* Length of valid UTF-8 `s`, or -1. */
static int utf8_valid(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        unsigned c = s[i];
        size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (n == 0 || i + n > len || (n == 2 && c < 0xc2) || (n == 4 && c > 0xf4))
            return -1;
        for (size_t k = 1; k < n; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return -1;
        if (n == 3) {
            unsigned cp = (c & 0x0f) << 12 | (s[i + 1] & 0x3f) << 6 | (s[i + 2] & 0x3f);
            if (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))
                return -1; /* overlong, or a surrogate */
        }
        if (n == 4) {
            unsigned cp = (c & 0x07) << 18 | (s[i + 1] & 0x3f) << 12;
            if (cp < 0x10000 || cp > 0x10ffff)
                return -1;
        }
        i += n;
    }
    return (int)len;
}

/* The bytes of the first `chars` characters of valid UTF-8 `s`. */
static size_t utf8_prefix(const char *s, size_t len, size_t chars)
{
    size_t i = 0;
    for (size_t c = 0; i < len && c < chars; c++) {
        i++;
        while (i < len && ((unsigned char)s[i] & 0xc0) == 0x80)
            i++;
    }
    return i;
}

static const struct {
    const char *longname, *shortname;
} SHORT[] = {
    {"commonName", "CN"}, {"countryName", "C"}, {"localityName", "L"},
    {"stateOrProvinceName", "ST"}, {"organizationName", "O"},
    {"organizationalUnitName", "OU"}, {"streetAddress", "STREET"},
    {"domainComponent", "DC"}, {"userId", "UID"},
};

/* One attribute as RFC 4514 writes it, appended to out (at most cap bytes in all). */
static void attribute(const X509_NAME_ENTRY *e, char *out, size_t *n, size_t cap)
{
    char key[128];
    OBJ_obj2txt(key, sizeof key, X509_NAME_ENTRY_get_object(e), 0);
    const char *name = key;
    for (size_t i = 0; i < sizeof SHORT / sizeof SHORT[0]; i++)
        if (strcmp(key, SHORT[i].longname) == 0)
            name = SHORT[i].shortname;
    unsigned char *value = NULL;
    int vlen = ASN1_STRING_to_UTF8(&value, X509_NAME_ENTRY_get_data(e));
    if (vlen < 0)
        vlen = 0;
    size_t keylen = strlen(name);
    if (*n + keylen + 1 < cap) {
        memcpy(out + *n, name, keylen);
        *n += keylen;
        out[(*n)++] = '=';
    }
    for (int i = 0; i < vlen && *n + 3 < cap; i++) {
        char ch = (char)value[i];
        /* As the Python worker did: specials escaped; then a leading '#' or ' ' and a
         * trailing ' ' get one backslash each (a lone " " gets two). */
        int escapes = (ch != '\0' && strchr(",+\"\\<>;=", ch) != NULL) ||
                      (i == 0 && (ch == '#' || ch == ' '));
        escapes += i == vlen - 1 && ch == ' ';
        while (escapes-- > 0)
            out[(*n)++] = '\\';
        out[(*n)++] = ch;
    }
    OPENSSL_free(value);
}

static struct wk_str subject_of(X509_NAME *name, struct arena *a)
{
    char out[4 * WK_MAX_SUBJECT + 8];
    size_t n = 0;
    int count = X509_NAME_entry_count(name);
    /* RDNs last first; the entries of one RDN (a set) in their order, joined by '+'. */
    for (int end = count; end > 0;) {
        int set = X509_NAME_ENTRY_set(X509_NAME_get_entry(name, end - 1)), start = end - 1;
        while (start > 0 && X509_NAME_ENTRY_set(X509_NAME_get_entry(name, start - 1)) == set)
            start--;
        if (end != count && n + 1 < sizeof out)
            out[n++] = ',';
        for (int i = start; i < end; i++) {
            if (i != start && n + 1 < sizeof out)
                out[n++] = '+';
            attribute(X509_NAME_get_entry(name, i), out, &n, sizeof out);
        }
        end = start;
    }
    size_t len = utf8_prefix(out, n, WK_MAX_SUBJECT);
    if (utf8_valid((unsigned char *)out, len) < 0)
        return (struct wk_str){NULL, -1};
    return keep(a, out, len);
}

static struct wk_str cn_of(X509_NAME *name, struct arena *a)
{
    int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    unsigned char *utf8 = NULL;
    int n = i >= 0 ? ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(
                                                     X509_NAME_get_entry(name, i)))
                   : -1;
    struct wk_str out = {NULL, -1};
    if (n >= 0 && utf8_valid(utf8, (size_t)n) >= 0)
        out = keep(a, (char *)utf8, utf8_prefix((char *)utf8, (size_t)n, WK_MAX_CN));
    OPENSSL_free(utf8);
    return out;
}

static void sans_of(X509 *cert, struct wk_handshake_msg *m, struct arena *a)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    size_t used = 0;
    for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_DNS && g->type != GEN_URI)
            continue;
        int dns = g->type == GEN_DNS;
        if ((dns ? m->n_dns : m->n_uri) >= WK_MAX_SANS)
            continue;
        const ASN1_IA5STRING *v = dns ? g->d.dNSName : g->d.uniformResourceIdentifier;
        const char *s = (const char *)ASN1_STRING_get0_data(v);
        int len = ASN1_STRING_length(v);
        if (len < 0 || utf8_valid((const unsigned char *)s, (size_t)len) < 0)
            continue;
        size_t keep_len = utf8_prefix(s, (size_t)len, dns ? WK_MAX_DNS : WK_MAX_URI);
        if (used + keep_len + 2 > WK_SAN_BUDGET)
            break; /* as many as fit, in certificate order */
        struct wk_str kept = keep(a, s, keep_len);
        if (kept.len < 0)
            break;
        used += keep_len + 2;
        if (dns)
            m->dns[m->n_dns++] = kept;
        else
            m->uri[m->n_uri++] = kept;
    }
    GENERAL_NAMES_free(names);
}

void wk_identity(X509 *cert, struct wk_handshake_msg *m, char *arena, size_t cap)
{
    struct arena a = {arena, cap, 0};
    m->client_cn = m->client_subject = (struct wk_str){NULL, -1};
    m->n_dns = m->n_uri = 0;
    if (cert == NULL)
        return;
    X509_NAME *name = X509_get_subject_name(cert);
    m->client_cn = cn_of(name, &a);
    m->client_subject = subject_of(name, &a);
    if (m->client_subject.len < 0)
        m->client_cn = (struct wk_str){NULL, -1};
    else
        sans_of(cert, m, &a);
}

void wk_client_identity(SSL *ssl, struct wk_handshake_msg *m, char *arena, size_t cap)
{
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (peer == NULL || !(SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) ||
        SSL_get_verify_result(ssl) != X509_V_OK)
        peer = NULL;
    wk_identity(peer, m, arena, cap);
}
