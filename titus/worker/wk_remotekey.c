/* Remote keys: OpenSSL signs through the key holder (DESIGN §5).
 *
 * Into each vhost's SSL_CTX the zygote installs the certificate chain and a
 * "foreign" private key that holds only the public half: an RSA with an
 * RSA_METHOD whose priv_enc, or an EC_KEY with an EC_KEY_METHOD whose sign,
 * sends the operation to the key holder (wk_kp_call) and returns its answer.
 * OpenSSL 3 keeps calling a foreign key's methods instead of its providers.
 * RSA key exchange is off: a decryption is refused here (and by the key holder).
 * Every answer is checked against RSA_size / ECDSA_size before it is copied.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* RSA_METHOD / EC_KEY_METHOD: the foreign-key hooks */
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>

#include "wk_ssl.h"

#define SSL_CTRL_CHAIN_CLEAR 88
#define SSL_CTRL_CHAIN_ADD 89

struct wk_key {
    uint16_t key_id;
    int sig_size;
};

static int rsa_index = -1, ec_index = -1;
static RSA_METHOD *rsa_method;
static EC_KEY_METHOD *ec_method;

static int rsa_priv_enc(int flen, const unsigned char *from, unsigned char *to, RSA *rsa,
                        int padding)
{
    const struct wk_key *key = RSA_get_ex_data(rsa, rsa_index);
    uint8_t op = padding == RSA_NO_PADDING      ? WK_KP_OP_RSA_RAW
                 : padding == RSA_PKCS1_PADDING ? WK_KP_OP_RSA_PKCS1
                                                : 0;
    if (key != NULL && op != 0 && from != NULL && to != NULL && flen > 0 &&
        flen <= key->sig_size &&
        wk_kp_call(op, key->key_id, from, (size_t)flen, to, (size_t)key->sig_size) ==
            key->sig_size) {
        wk_kh.ok++;
        return key->sig_size;
    }
    wk_kh.broken = 1; /* whatever failed, this connection asks nothing more */
    wk_kh.failed++;
    return -1;
}

static int rsa_priv_dec(int flen, const unsigned char *from, unsigned char *to, RSA *rsa,
                        int padding)
{
    (void)flen, (void)from, (void)to, (void)rsa, (void)padding;
    wk_kh.failed++; /* RSA key exchange is off: there is no decryption */
    return -1;
}

static int ec_sign(int type, const unsigned char *dgst, int dlen, unsigned char *sig,
                   unsigned int *siglen, const BIGNUM *kinv, const BIGNUM *r, EC_KEY *eckey)
{
    (void)type;
    const struct wk_key *key = EC_KEY_get_ex_data(eckey, ec_index);
    int n = -1;
    /* A caller-chosen nonce (kinv, r) is never served. */
    if (key != NULL && dgst != NULL && sig != NULL && siglen != NULL && kinv == NULL &&
        r == NULL && dlen > 0 && dlen <= 64)
        n = wk_kp_call(WK_KP_OP_ECDSA, key->key_id, dgst, (size_t)dlen, sig,
                       (size_t)key->sig_size);
    if (n > 0) {
        *siglen = (unsigned int)n;
        wk_kh.ok++;
        return 1;
    }
    wk_kh.broken = 1;
    wk_kh.failed++;
    return 0;
}

static int methods(char *err, size_t errlen)
{
    if (rsa_method != NULL)
        return 0;
    rsa_index = RSA_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    ec_index = EC_KEY_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    RSA_METHOD *rm = RSA_meth_dup(RSA_get_default_method());
    EC_KEY_METHOD *em = EC_KEY_METHOD_new(EC_KEY_get_default_method());
    if (rsa_index < 0 || ec_index < 0 || rm == NULL || em == NULL ||
        !RSA_meth_set1_name(rm, "titus remote key") || !RSA_meth_set_priv_enc(rm, rsa_priv_enc) ||
        !RSA_meth_set_priv_dec(rm, rsa_priv_dec)) {
        snprintf(err, errlen, "cannot build the remote key methods");
        RSA_meth_free(rm);
        EC_KEY_METHOD_free(em);
        return -1;
    }
    /* sign_setup and sign_sig stay NULL: OpenSSL then fails those paths closed. */
    EC_KEY_METHOD_set_sign(em, ec_sign, NULL, NULL);
    rsa_method = rm;
    ec_method = em;
    return 0;
}

static EVP_PKEY *foreign_rsa(const unsigned char *n, size_t nlen, const unsigned char *e,
                             size_t elen, struct wk_key *key, char *err, size_t errlen)
{
    BIGNUM *bn = BN_bin2bn(n, (int)nlen, NULL), *be = BN_bin2bn(e, (int)elen, NULL);
    RSA *rsa = RSA_new();
    if (bn == NULL || be == NULL || rsa == NULL || !RSA_set0_key(rsa, bn, be, NULL)) {
        BN_free(bn);
        BN_free(be);
        RSA_free(rsa);
        snprintf(err, errlen, "cannot build the public RSA key");
        return NULL;
    }
    /* The method before EVP_PKEY_set1_RSA, which decides "foreign" on assignment. */
    EVP_PKEY *pkey = NULL;
    if (RSA_set_method(rsa, rsa_method) && RSA_set_ex_data(rsa, rsa_index, key) &&
        (pkey = EVP_PKEY_new()) != NULL && EVP_PKEY_set1_RSA(pkey, rsa)) {
        key->sig_size = RSA_size(rsa);
        RSA_free(rsa); /* the EVP_PKEY holds it */
        return pkey;
    }
    EVP_PKEY_free(pkey);
    RSA_free(rsa);
    snprintf(err, errlen, "cannot make the RSA key remote");
    return NULL;
}

static EVP_PKEY *foreign_ec(int nid, const unsigned char *point, size_t len, struct wk_key *key,
                            char *err, size_t errlen)
{
    EC_KEY *ec = EC_KEY_new_by_curve_name(nid);
    EVP_PKEY *pkey = NULL;
    if (ec == NULL) {
        snprintf(err, errlen, "libcrypto does not know curve %d", nid);
        return NULL;
    }
    if (!EC_KEY_set_method(ec, ec_method) || !EC_KEY_oct2key(ec, point, len, NULL)) {
        EC_KEY_free(ec);
        snprintf(err, errlen, "EC_KEY_oct2key rejected the certificate's public key");
        return NULL;
    }
    if (EC_KEY_set_ex_data(ec, ec_index, key) && (pkey = EVP_PKEY_new()) != NULL &&
        EVP_PKEY_set1_EC_KEY(pkey, ec)) {
        key->sig_size = ECDSA_size(ec);
        EC_KEY_free(ec);
        return pkey;
    }
    EVP_PKEY_free(pkey);
    EC_KEY_free(ec);
    snprintf(err, errlen, "cannot make the EC key remote");
    return NULL;
}

static X509 *parse_cert(const unsigned char *der, size_t len)
{
    const unsigned char *p = der;
    if (len > 1 << 20)
        return NULL;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x != NULL && p != der + len) { /* trailing bytes: not one certificate */
        X509_free(x);
        return NULL;
    }
    return x;
}

int wk_install_key(SSL_CTX *ctx, const unsigned char *const *ders, const size_t *der_lens,
                   int n_ders, int is_rsa, const unsigned char *pub, size_t pub_len,
                   const unsigned char *exp, size_t exp_len, int curve_nid, uint16_t key_id,
                   char *err, size_t errlen)
{
    if (n_ders < 1 || methods(err, errlen) < 0)
        return n_ders < 1 ? (snprintf(err, errlen, "no certificate"), -1) : -1;
    /* Keys and their ex_data live as long as the process: OpenSSL may call them
     * from any connection of any clone. */
    struct wk_key *key = OPENSSL_zalloc(sizeof *key);
    if (key == NULL)
        return snprintf(err, errlen, "out of memory"), -1;
    key->key_id = key_id;
    EVP_PKEY *pkey = is_rsa ? foreign_rsa(pub, pub_len, exp, exp_len, key, err, errlen)
                            : foreign_ec(curve_nid, pub, pub_len, key, err, errlen);
    if (pkey == NULL)
        return -1; /* `key` may be referenced by a half-built key: kept */
    ERR_clear_error();
    int ok = 0;
    X509 *leaf = parse_cert(ders[0], der_lens[0]);
    if (leaf == NULL)
        snprintf(err, errlen, "libssl cannot parse the certificate");
    else if (SSL_CTX_use_certificate(ctx, leaf) != 1)
        snprintf(err, errlen, "SSL_CTX_use_certificate failed");
    else if (SSL_CTX_use_PrivateKey(ctx, pkey) != 1)
        snprintf(err, errlen, "SSL_CTX_use_PrivateKey refused the remote key");
    else
        ok = 1;
    X509_free(leaf);
    EVP_PKEY_free(pkey); /* the SSL_CTX holds it */
    if (ok)
        SSL_CTX_ctrl(ctx, SSL_CTRL_CHAIN_CLEAR, 0, NULL);
    for (int i = 1; ok && i < n_ders; i++) {
        X509 *x = parse_cert(ders[i], der_lens[i]);
        if (x == NULL || SSL_CTX_ctrl(ctx, SSL_CTRL_CHAIN_ADD, 1, x) != 1) {
            snprintf(err, errlen, "cannot add chain certificate %d", i);
            ok = 0;
        }
        X509_free(x);
    }
    if (ok && SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "the installed key does not match the certificate");
        ok = 0;
    }
    ERR_clear_error();
    return ok ? key->sig_size : -1;
}
