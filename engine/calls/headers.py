"""Pure builders of what the call layer sends: no state, no clock, no I/O.

* the INVITE to a callee (RFC 3261 s8.1.1), carrying the caller's identity
  (P-Asserted-Identity, RFC 3325; Privacy, RFC 3323) and, for a forwarded
  call, who forwarded it and why (Diversion, RFC 5806; History-Info, RFC 7044
  with the causes of RFC 4458);
* the CANCEL of a callee INVITE (RFC 3261 s9.1) with its Reason (RFC 3326);
* the responses to the caller's INVITE (provisional, 2xx, final);
* the Replaces header of an attended transfer's Refer-To (RFC 3891);
* :data:`SERVER`, the one product token the engine writes (Server and
  User-Agent, RFC 3261 s20.35 and s20.41), and :class:`Local`, how the engine
  names itself in Via and Contact.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from engine.sip.dialog import new_branch, new_call_id, new_tag
from engine.sip.message import Request, Response, make_response
from media import sdp
from routing import CallFacts, Device, Diversion, External

__all__ = [
    "COMPLETED_ELSEWHERE",
    "SERVER",
    "Local",
    "callee_invite",
    "cancel_request",
    "diversion",
    "history_info",
    "parse_replaces",
    "to_caller",
]

SERVER = "Switchboard/0.1"
COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'
# RFC 4458 causes for History-Info, by RFC 5806 diversion reason.
HI_CAUSE = {"no-answer": 408, "user-busy": 486, "unavailable": 480, "unconditional": 302,
            "time-of-day": 302, "do-not-disturb": 480, "away": 302}
# Session timers (RFC 4028) on an anchored call: the engine answers re-INVITEs
# itself, so a caller's refresh never reaches the callee; offering the callee a
# timer with the engine as refresher would drop the call when it expires. The
# callee leg is therefore offered no timer ("timer" is removed from Supported,
# Session-Expires and Min-SE are not copied); a callee that wants one anyway
# must be the refresher (RFC 4028 s9), and its refreshes are answered here.
COPY_TO_CALLEE = ("content-type", "allow", "supported", "session-expires", "min-se",
                  "accept", "user-agent")


@dataclass(frozen=True, slots=True)
class Local:
    """How we name ourselves in Via and Contact."""

    host: str
    port: int
    domain: str
    tls_port: int = 0  # the TLS listener (serve --tls), 0: none
    # This process's node id (serve --node-id): in the Call-IDs of the legs it makes.
    node: str = ""

    def port_for(self, transport: str) -> int:
        """Our port as written in a Via or Contact for ``transport``."""
        return self.tls_port if transport.lower() == "tls" and self.tls_port else self.port

    def contact(self, transport: str, user: str = "switchboard") -> str:
        """``<sip:user@host:port[;transport=tcp|tls]>`` (RFC 3261 s19.1.1)."""
        t = transport.lower()
        suffix = f";transport={t}>" if t in ("tcp", "tls") else ">"
        return f"<sip:{user}@{self.host}:{self.port_for(t)}{suffix}"


def to_caller(invite: Request, status: int, tag: str, headers: Iterable[tuple[str, str]] = (),
              body: bytes = b"", reason: str | None = None) -> Response:
    """Our response to the caller's INVITE (``tag``: our To tag), with Server."""
    return make_response(invite, status, reason, [("Server", SERVER), *headers], body,
                         to_tag=tag)


def callee_invite(caller: Request, facts: CallFacts, chain: tuple[Diversion, ...],
                  target: Device | External, uri: str, transport: str, local: Local,
                  offer: sdp.SessionDescription | None = None) -> Request:
    """The INVITE to one callee of a call: a new Call-ID and From tag (each leg is
    its own dialog), the caller's identity as routing decided it, the diversion
    ``chain`` of a forwarded call, the headers of :data:`COPY_TO_CALLEE`, and our
    ``offer`` (an anchored call) or the caller's body."""
    domain = local.domain
    display = facts.caller_name.replace('"', "")
    if isinstance(target, External):
        # The name that goes to a trunk is routing's (the presented number's
        # caller_id_name, or a trunk caller's own): never a user's name.
        ident = target.caller_id or facts.caller
        name = target.caller_name.replace('"', "").replace("\\", "")
        pai = f'"{name}" <sip:{ident}@{domain}>' if name else f"<sip:{ident}@{domain}>"
        from_value = '"Anonymous" <sip:anonymous@anonymous.invalid>' if target.privacy \
            else pai
    else:
        from_value = f'"{display}" <sip:{facts.caller}@{domain}>' if display else \
            f"<sip:{facts.caller}@{domain}>"
        pai = f"<sip:{facts.caller}@{domain}>"
    mf = caller.max_forwards
    t = transport.upper() or "UDP"
    headers: list[tuple[str, str]] = [
        ("Via", f"SIP/2.0/{t} {local.host}:{local.port_for(t)};branch={new_branch()};rport"),
        ("Max-Forwards", str((mf if mf is not None else 70) - 1)),
        ("From", f"{from_value};tag={new_tag()}"),
        ("To", f"<sip:{target.extension}@{domain}>" if isinstance(target, Device)
         else f"<{uri}>"),
        ("Call-ID", new_call_id(local.host, local.node)),
        ("CSeq", "1 INVITE"),
        ("Contact", local.contact(t)),
        ("P-Asserted-Identity", pai),
    ]
    if isinstance(target, External) and target.privacy:
        headers.append(("Privacy", "id"))
    for value in diversion(chain, domain):
        headers.append(("Diversion", value))
    if chain:
        headers += [("History-Info", v) for v in history_info(chain, uri, domain)]
    anchored = offer is not None
    for h in caller.headers:
        if h[0] in COPY_TO_CALLEE:
            if anchored and h[0] in ("session-expires", "min-se"):
                continue  # no session timer on the callee leg (see COPY_TO_CALLEE)
            value = h[2]
            if anchored and h[0] == "supported":
                value = ", ".join(o.strip() for o in value.split(",")
                                  if o.strip().lower() != "timer")
                if not value:
                    continue
            headers.append((h[1], value))
    body = caller.body if offer is None else offer.to_bytes()
    return Request.build("INVITE", uri, headers, body)


def diversion(chain: tuple[Diversion, ...], domain: str) -> list[str]:
    """Diversion values, most recent first (RFC 5806 s3)."""
    return [f"<sip:{d.extension}@{domain}>;reason={d.reason};counter=1"
            for d in reversed(chain)]


def history_info(chain: tuple[Diversion, ...], target: str, domain: str) -> list[str]:
    """History-Info entries (RFC 7044): each diverting user, then the new target."""
    out: list[str] = []
    index = "1"
    for i, d in enumerate(chain):
        cause = HI_CAUSE.get(d.reason, 480)
        reason = urllib.parse.quote(f'SIP;cause={cause};text="{d.reason}"', safe="")
        entry = f"<sip:{d.extension}@{domain}?Reason={reason}>;index={index}"
        if i:
            entry += ";rc=" + index.rsplit(".", 1)[0]
        out.append(entry)
        index += ".1"
    last_cause = HI_CAUSE.get(chain[-1].reason, 480)
    out.append(f"<{target};cause={last_cause}>;index={index};mp={index.rsplit('.', 1)[0]}")
    return out


def cancel_request(invite: Request, reason: str | None) -> Request:
    """The CANCEL of a client INVITE (RFC 3261 s9.1), with a Reason (RFC 3326)."""
    headers: list[tuple[str, str]] = [("Via", invite.get_all("via")[0])]
    headers += [("Route", v) for v in invite.get_lines("route")]
    headers += [("Max-Forwards", "70"), ("From", invite.get("from") or ""),
                ("To", invite.get("to") or ""), ("Call-ID", invite.call_id),
                ("CSeq", f"{invite.cseq.number} CANCEL")]
    if reason:
        headers.append(("Reason", reason))
    return Request.build("CANCEL", invite.uri_text, headers)


def parse_replaces(headers: str) -> tuple[str, str, str] | None:
    """(Call-ID, to-tag, from-tag) of the one ``Replaces`` header (RFC 3891) in the
    headers part of a Refer-To URI (``Replaces=id%3Bto-tag%3Da%3Bfrom-tag%3Db``);
    None without exactly one readable Replaces."""
    fields = urllib.parse.parse_qsl(headers, keep_blank_values=True)
    # Other headers (pjsip adds Require=replaces) concern the target's INVITE,
    # which the engine does not send: only Replaces is read.
    values = [value for name, value in fields if name.lower() == "replaces"]
    if len(values) != 1:
        return None
    call_id, _, rest = values[0].partition(";")
    tags: dict[str, str] = {}
    for part in rest.split(";"):
        name, _, value = part.strip().partition("=")
        tags[name.strip().lower()] = value.strip()
    to_tag, from_tag = tags.get("to-tag"), tags.get("from-tag")
    if not call_id.strip() or not to_tag or not from_tag:
        return None
    return call_id.strip(), to_tag, from_tag
