"""TLS for brokers and the gateway: the ``tls:`` section of cluster.yaml.

::

    tls:
      cert_file: /etc/shoal/tls/server.pem   # certificate chain (PEM) the server presents
      key_file: /etc/shoal/tls/server.key    # its private key (PEM)
      ca_file: /etc/shoal/tls/ca.pem         # optional: the CA to trust when calling https brokers

Relative paths are taken from the process's working directory, as ``data_dir`` is.
With ``tls:`` set, every broker URL must be ``https://``. The flags ``--tls-cert`` and
``--tls-key`` of ``python -m shoal.broker`` and of the gateway override the file.
Clients trust the CA through ``ca_file`` (the gateway) or, for any Python program
using aiohttp's defaults (the CLI, the client library), ``SSL_CERT_FILE=ca.pem``.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class TlsConfig:
    """Where the server's certificate and key are, and which CA clients trust.

    Attributes:
        cert_file: PEM certificate chain the server presents.
        key_file: PEM private key of that certificate.
        ca_file: PEM CA bundle to verify https brokers with; None: the system's.
    """

    cert_file: str
    key_file: str
    ca_file: str | None = None

    def to_dict(self) -> dict:
        out = {"cert_file": self.cert_file, "key_file": self.key_file}
        if self.ca_file:
            out["ca_file"] = self.ca_file
        return out


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """An SSL context for serving HTTPS (TLS 1.2 or newer).

    Raises:
        TlsError: a file is missing or the pair does not load.
    """
    for path in (cert_file, key_file):
        if not os.path.isfile(path):
            raise TlsError(f"cannot read {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot load the TLS certificate {cert_file} with key {key_file}: {exc}") from None
    return context


def serving_context(config: TlsConfig | None, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext | None:
    """The server's SSL context from the flags, else from ``tls:``; None serves plain HTTP.

    Raises:
        TlsError: only one of certificate and key, or they do not load.
    """
    cert_file = cert_file or (config.cert_file if config else None)
    key_file = key_file or (config.key_file if config else None)
    if not cert_file and not key_file:
        return None
    if not (cert_file and key_file):
        raise TlsError("HTTPS needs both a certificate and its key (--tls-cert and --tls-key, or tls: in cluster.yaml)")
    return server_context(cert_file, key_file)


def client_context(ca_file: str | None) -> ssl.SSLContext | None:
    """An SSL context that trusts ``ca_file`` for outgoing https calls; None keeps the default.

    Raises:
        TlsError: the CA file is missing or not PEM certificates.
    """
    if not ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise TlsError(f"cannot read the CA file {ca_file}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot load the CA file {ca_file}: {exc}") from None
