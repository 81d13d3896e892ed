"""TLS contexts for both ends, and the names a peer certificate vouches for.

Rule: TLS 1.2 or newer, the ssl module's defaults for ciphers; with a CA the
server requires a client certificate signed by it (mutual authentication), and
the client always verifies the server against the -h name. No TLS options:
plain TCP, as before.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from tcppipe.errors import UsageError, describe_os_error


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @property
    def enabled(self) -> bool:
        return any((self.cert, self.key, self.ca))


def _load_chain(context: ssl.SSLContext, files: TlsFiles) -> None:
    if files.key and not files.cert:
        raise UsageError("--tls-key needs --tls-cert")
    if files.cert:
        try:
            context.load_cert_chain(files.cert, files.key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load TLS certificate {files.cert}: {describe_tls_error(exc)}") from None


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load TLS CA {ca}: {describe_tls_error(exc)}") from None


def server_context(files: TlsFiles) -> ssl.SSLContext | None:
    """The server's context, or None for plain TCP."""
    if not files.enabled:
        return None
    if not files.cert:
        raise UsageError("TLS on tcppiped needs --tls-cert (and --tls-key unless the key is in it)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, files)
    if files.ca:
        _load_ca(context, files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext | None:
    """The client's context (verifying the server against the system CAs or --tls-ca), or None."""
    if not files.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.ca:
        _load_ca(context, files.ca)
    _load_chain(context, files)
    return context


def certificate_names(peercert: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses in a verified certificate's subjectAltName."""
    dns: list[str] = []
    ips: list[str] = []
    for kind, value in (peercert or {}).get("subjectAltName", ()):
        if kind == "DNS":
            dns.append(str(value))
        elif kind == "IP Address":
            ips.append(str(value).strip())
    return dns, ips


def describe_tls_error(exc: BaseException) -> str:
    """One line for a TLS failure, without the C source location."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return str(exc)
