"""SSL contexts for DICOM over TLS (PS3.15 B.1/B.9), built from certificate file paths."""

from __future__ import annotations

import ssl

from monai_app.node.config import TLSConfig


def server_context(tls: TLSConfig) -> ssl.SSLContext | None:
    """Context for the receiving side (None when TLS is off).

    With ``verify_peer`` the caller must present a certificate signed by ``ca_file``.
    """
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify_peer else ssl.CERT_NONE
    return ctx


def client_context(tls: TLSConfig) -> ssl.SSLContext | None:
    """Context for sending results (None when TLS is off)."""
    if not tls.enabled:
        return None
    cafile = str(tls.ca_file) if tls.ca_file is not None else None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify_peer:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx
