"""client-allow-*: whether a vhost admits the client certificate a worker reports.

OpenSSL, in the worker, has verified the certificate (client-ca, client-crl);
the supervisor decides who among those signed may reach the backend, so the
policy stays in Python whatever the worker is written in.  Any one listed
identity admits: the subject CN, a DNS name SAN (without case) or a URI SAN
(exactly).  The worker's report is trusted as far as the worker is: see
docs/security-model.md.
"""

from __future__ import annotations

from titus.config.model import TLSSettings
from titus.wire.control import HandshakeDone


def refusal(tls: TLSSettings, hs: HandshakeDone) -> str | None:
    """Why the vhost refuses this client (one line naming what it had), or None."""
    if not tls.client_allow_list:
        return None
    if hs.client_cn is not None and hs.client_cn in tls.client_allow_cn:
        return None
    if any(name.lower() in tls.client_allow_dns for name in hs.client_dns):
        return None
    if any(uri in tls.client_allow_uri for uri in hs.client_uri):
        return None
    if hs.client_subject is None:
        return "no verified client certificate"
    sans = [f"DNS:{n}" for n in hs.client_dns] + [f"URI:{u}" for u in hs.client_uri]
    return (f"client {hs.client_subject} is not on the vhost's allow-list"
            + (f" (SANs: {', '.join(sans)})" if sans else ""))
