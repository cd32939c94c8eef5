"""What the process shell is told at start: addresses, data folder, TLS, limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.shell.connlimit import StreamLimits
from engine.shell.overload import OverloadConfig

__all__ = ["ServerConfig", "parse_hostport"]


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """'HOST:PORT', 'HOST' or ':PORT' -> (host, port); IPv6 as '[::1]:5060'."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if port and not port.isdigit():
        raise ValueError(f"{text!r}: the port must be a number")
    return host or "0.0.0.0", int(port) if port else default_port


@dataclass(slots=True)
class ServerConfig:
    sip_host: str = "0.0.0.0"
    sip_port: int = 5060
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    data_dir: Path = Path("switchboard-data")
    # SIP over TLS (RFC 3261 s26.3.1): a listener when a certificate is given, and
    # the CA bundle that trunks' certificates are checked against (None: the
    # system's, or $SSL_CERT_FILE).
    tls_host: str = ""
    tls_port: int = 0
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str | None = None
    # SIP TCP/TLS connection limits (engine.connlimit): per source, global, deadlines.
    limits: StreamLimits = field(default_factory=StreamLimits)
    # The receive queue's overload control (engine.overload).
    overload: OverloadConfig = field(default_factory=OverloadConfig)
    # This process's name among the nodes sharing the store ("" : host:port).
    node_id: str = ""
