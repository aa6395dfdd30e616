"""One line of help per option: the single source for `titus --help` and the docs."""

from __future__ import annotations

from titus.config.options import OPTIONS

HELP: dict[str, str] = {
    "config": "include another configuration file (titus.conf, or TOML if it ends in .toml)",
    "config-directory": "include every non-hidden file of a directory, in name order",
    "daemon": "yes: detach after start-up succeeded (errors still reach the shell)",
    "pid-file": "write the supervisor's pid here (daemon mode)",
    "port": "port to listen on for listeners that name none (default address [::], dual-stack)",
    "transparent": "no | yes (backend = the client's original destination, source kept; "
                   "needs a TPROXY rule) | backend-only (source kept); both need CAP_NET_ADMIN "
                   "and the backend's replies to clients routed back to titus (fwmark rule)",
    "backend": "backend address: IP or DNS name (resolved at start-up); omitted = the local "
               "address the client connected to",
    "backend-port": "backend port",
    "min-spare-children": "idle, already jailed workers kept ready (default 3)",
    "max-children": "connections served at once, one worker each (default 100); more wait in "
                    "the listen backlog",
    "max-handshake-time": "seconds a client may take to finish its TLS handshake (default 10)",
    "network-user": "superseded: every worker gets its own dynamic uid (accepted, ignored)",
    "network-group": "superseded: every worker gets its own dynamic gid (accepted, ignored)",
    "keyserver-user": "superseded: the key holder runs under its own jail uid (accepted, "
                      "ignored)",
    "keyserver-group": "superseded: the key holder runs under its own jail gid (accepted, "
                       "ignored)",
    "chroot": "superseded: every jail has an empty read-only root (accepted, ignored)",
    "key": "private key (PEM, RSA 2048-4096 or ECDSA P-256/P-384); only the key holder opens it",
    "cert": "certificate chain (PEM, leaf first)",
    "ciphers": "TLS 1.2 cipher suites (OpenSSL syntax); RSA key exchange is always removed",
    "honor-client-cipher-order": "yes: the client's preference order wins (default no)",
    "dhgroup": "14, 15, 16 (RFC 3526) or a DH parameter file: enables DHE suites",
    "ecdhcurve": "key-exchange groups in order, e.g. X25519:prime256v1",
    "compression": "must be no: TLS compression leaks secrets (CRIME)",
    "sslv3": "must be no: SSLv3 is broken (POODLE)",
    "tlsv1": "must be no: TLS 1.0 is below the TLS 1.2 minimum",
    "tlsv1.1": "must be no: TLS 1.1 is below the TLS 1.2 minimum",
    "tlsv1.2": "no: TLS 1.3 only",
    "tlsv1.3": "no: TLS 1.2 only",
    "local-address": "vhost: match connections to this local IP address",
    "local-port": "vhost: match connections to this local port",
    "sni-name": "vhost: match this server name (repeatable; *.example.com matches one label)",
    "name": "vhost: a name for logs and metrics",
    "listen": "ADDRESS:PORT to listen on (repeatable; [v6]:port for IPv6)",
    "min-tls-version": "1.2 or 1.3",
    "max-tls-version": "1.2 or 1.3",
    "ciphersuites": "TLS 1.3 cipher suites (OpenSSL syntax)",
    "alpn": "ALPN protocols offered, comma separated, e.g. http/1.1; h2 only with "
            "backend-h2 yes",
    "backend-h2": "yes: the backend speaks HTTP/2 in cleartext (prior knowledge), so alpn may "
                  "offer h2; without it h2 is refused (an HTTP/1.1 backend would answer h2 "
                  "clients with nothing)",
    "client-auth": "none | optional | required: ask clients for a certificate, verified "
                   "against client-ca; the identity goes to the backend in PROXY v2",
    "client-ca": "CA certificates (PEM) that client certificates must chain to",
    "client-crl": "revoked client certificates: a PEM file of CRLs issued by client-ca, "
                  "re-read on every reload (SIGHUP); a revoked certificate fails the handshake",
    "client-allow-cn": "only clients whose certificate's subject CN is this (repeatable; "
                       "with client-allow-dns/-uri: any one listed identity admits); needs "
                       "client-auth required; a refused client is logged with its subject",
    "client-allow-dns": "only clients whose certificate has this DNS name SAN (repeatable, "
                        "case-insensitive); see client-allow-cn",
    "client-allow-uri": "only clients whose certificate has this URI SAN, e.g. "
                        "spiffe://example.org/web (repeatable, exact); see client-allow-cn",
    "proxy-protocol": "v1 | v2 | no: send a PROXY header to the backend (written by the "
                      "supervisor, never by a worker)",
    "ocsp-response": "a DER OCSP response file to staple for this vhost's certificate; "
                     "re-read when it changes (an expired or mismatching one is not stapled)",
    "backend-connect-timeout": "seconds to connect to a backend (default 10)",
    "dns-timeout": "seconds to resolve a backend name; A and AAAA are asked separately "
                   "(default 5)",
    "drain-timeout": "seconds connections in flight may still run after SIGTERM before "
                     "they are cut (default 30)",
    "log-format": "json | text | auto (text on a terminal)",
    "metrics-listen": "ADDRESS:PORT of the Prometheus endpoint (GET /metrics)",
    "keyholder-budget": "signatures one connection may ask of the key holder (default 1)",
    "keyholder-timeout": "seconds a worker waits for a signature (default 2)",
    "uid-first": "first host uid of the jail range (titus.toml [jail] only)",
    "uid-count": "number of host uids in the jail range (titus.toml [jail] only)",
}

missing = set(OPTIONS) - set(HELP)
if missing:  # pragma: no cover - a new option without help fails every import
    raise RuntimeError(f"options without help text: {sorted(missing)}")


def options_text(width: int = 26) -> str:
    """`--option  help` lines for every titus.conf option, in the table's order."""
    lines = []
    for name, option in OPTIONS.items():
        if option.conf:
            lines.append(f"  --{name:<{width}} {HELP[name]}")
    return "\n".join(lines)
