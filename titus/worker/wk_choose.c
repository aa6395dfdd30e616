/* The vhost chooser: local address and port, then the server name; the first
 * match wins (titus 0.4's order, and titus/config/model.py's VHost.matches_local
 * and VHost.matches_sni, which the tests hold it to).  Also the one piece of
 * attacker input parsed outside OpenSSL: the server_name extension's body, which
 * OpenSSL has already delimited (SSL_client_hello_get0_ext), parsed as strictly as
 * OpenSSL will parse it for the real handshake.  No OpenSSL calls: the libFuzzer
 * harness links this file alone.
 */
#include <string.h>

#include "wk_ssl.h"

void wk_normalize_sni(const char *in, size_t len, char *out)
{
    while (len > 0 && in[len - 1] == '.')
        len--;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)(in[i] >= 'A' && in[i] <= 'Z' ? in[i] + ('a' - 'A') : in[i]);
    out[len] = '\0';
}

/* config_model.sni_matches: exact, or "*.example.com" for exactly one label. */
static int sni_matches(const char *pattern, const char *name)
{
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = strchr(name, '.');
        return dot != NULL && dot != name && strcmp(dot + 1, pattern + 2) == 0;
    }
    return strcmp(pattern, name) == 0;
}

static void unmap(const struct wk_addr *in, struct wk_addr *out)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    *out = *in;
    if (in->family == 6 && memcmp(in->ip, mapped, 12) == 0) {
        out->family = 4;
        memmove(out->ip, in->ip + 12, 4);
        memset(out->ip + 4, 0, 12);
    }
}

static int serves_address(const struct wk_vhost *v, const struct wk_addr *a, uint16_t port)
{
    if (v->has_addr && (v->addr.family != a->family ||
                        memcmp(v->addr.ip, a->ip, a->family == 4 ? 4 : 16) != 0))
        return 0;
    return !v->has_port || v->port == port;
}

int wk_choose_by_address(const struct wk_table *t, const struct wk_addr *local)
{
    struct wk_addr a;
    unmap(local, &a);
    for (int i = 0; i < t->n; i++)
        if (serves_address(&t->v[i], &a, local->port))
            return t->v[i].n_sni == 0 ? i : -1;
    return -1;
}

int wk_choose(const struct wk_table *t, const struct wk_addr *local, const char *sni)
{
    struct wk_addr a;
    unmap(local, &a);
    for (int i = 0; i < t->n; i++) {
        const struct wk_vhost *v = &t->v[i];
        if (!serves_address(v, &a, local->port))
            continue;
        if (v->n_sni == 0)
            return i;
        for (int k = 0; k < v->n_sni; k++)
            if (sni_matches(v->sni[k], sni))
                return i;
    }
    return -1;
}

int wk_parse_sni_ext(const unsigned char *ext, size_t len, char *out, size_t cap)
{
    /* As OpenSSL will parse it for the real handshake: a list holding exactly one
     * host_name entry, which fills it. */
    if (len < 2 || (size_t)(ext[0] << 8 | ext[1]) != len - 2 || len < 5)
        return -1;
    if (ext[2] != TLSEXT_NAMETYPE_host_name)
        return -1;
    size_t n = (size_t)(ext[3] << 8 | ext[4]);
    if (n != len - 5)
        return -1;
    if (n > WK_MAX_SNI || n >= cap)
        return -2;
    for (size_t i = 0; i < n; i++) /* a host name: printable ASCII, no space */
        if (ext[5 + i] <= 0x20 || ext[5 + i] >= 0x7f)
            return -2;
    memcpy(out, ext + 5, n);
    out[n] = '\0';
    return (int)n;
}

