"""What the process shell is told at start: addresses, data folder, TLS, limits."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from engine.shell.connlimit import StreamLimits
from engine.shell.overload import OverloadConfig

__all__ = ["NODE_ID", "ServerConfig", "default_node_id", "parse_hostport"]

# What a node id may be: it goes in the Call-IDs of the legs the node makes (so an
# edge can send in-dialog requests to it) and in its calls' dialog records.
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")


def default_node_id(port: int) -> str:
    """This host's name and the SIP port, as a node id (what a Call-ID may carry)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()).strip("-.") or "node"
    return f"{host[:56]}:{port}"


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
    # Seconds between reads of the other nodes' bindings when no NOTIFY came sooner
    # (engine.shell.storesync: the fallback on PostgreSQL, the only way on SQLite).
    binding_poll_seconds: float = 1.0
