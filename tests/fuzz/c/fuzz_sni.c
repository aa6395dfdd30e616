/* libFuzzer: the server_name extension's body as a client sends it (wk_choose.c),
 * the only attacker bytes the worker parses outside OpenSSL; then the chooser
 * on a small table.  A name it accepts is printable ASCII without spaces. */
#include <stdlib.h>
#include <string.h>

#include "wk_ssl.h"

static char *patterns[] = {"a.test", "*.b.test", "", "*.", "*"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[WK_MAX_SNI + 1], norm[WK_MAX_SNI + 1];
    int n = wk_parse_sni_ext(data, size, name, sizeof name);
    if (n < -2 || n > WK_MAX_SNI)
        abort();
    if (n < 0)
        return 0;
    if ((size_t)n != strlen(name) || (size_t)n + 5 != size)
        abort();
    for (int i = 0; i < n; i++)
        if ((unsigned char)name[i] <= 0x20 || (unsigned char)name[i] >= 0x7f)
            abort();
    wk_normalize_sni(name, (size_t)n, norm);
    struct wk_vhost v[3] = {
        {.n_sni = 2, .sni = patterns},
        {.n_sni = 3, .sni = patterns + 2, .has_port = 1, .port = 443},
        {.n_sni = 0},
    };
    struct wk_table t = {.n = 3, .v = v};
    struct wk_addr local = {.family = 4, .ip = {127, 0, 0, 1}, .port = 443};
    int chosen = wk_choose(&t, &local, norm);
    if (chosen < 0 || chosen > 2)
        abort(); /* the last vhost takes any name */
    return 0;
}
