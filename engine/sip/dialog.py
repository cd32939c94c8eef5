"""SIP dialogs (RFC 3261 s12), sans-I/O: the state every B2BUA call leg keeps.

A dialog is the peer-to-peer relationship between two user agents that lasts
for a while (a call). It is identified by Call-ID, local tag and remote tag
(s12) and holds what is needed to send requests inside it: the local and
remote sequence numbers, the remote target (the peer's Contact) and the route
set (the Record-Route the proxies inserted, s16.6 step 4, s20.30).

* :meth:`Dialog.uac` / :meth:`Dialog.uas` create a dialog from a
  dialog-creating exchange (s12.1.2 / s12.1.1);
* :meth:`Dialog.new_request` and :meth:`Dialog.ack` build requests inside it
  (s12.2.1.1, s13.2.2.4), :meth:`Dialog.next_hop` says where they go;
* :meth:`Dialog.on_request`, :meth:`Dialog.on_response` and
  :meth:`Dialog.on_response_sent` update it (s12.2.2, s12.2.1.2, s13.2.2.4,
  s14, s15, s12.3);

No socket, no clock, no event loop. The only impurity is randomness (branch,
tags, Call-ID, the initial CSeq of a UAS dialog), from the pooled os.urandom of
:func:`engine.sip.message.random_bytes`.

Matching is exact and case-sensitive for Call-ID and tags (s19.3, s20.8).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from enum import StrEnum

from engine.sip.message import (
    Address,
    ParseError,
    Request,
    Response,
    parse_address,
    parse_uri,
    random_below,
    random_hex,
)
from engine.sip.message.core import header_key

__all__ = [
    "CONTACT_METHODS",
    "COOKIE",
    "MAX_FORWARDS",
    "TARGET_REFRESH",
    "Dialog",
    "DialogId",
    "DialogState",
    "new_branch",
    "new_call_id",
    "new_tag",
]

COOKIE = "z9hG4bK"  # RFC 3261 s8.1.1.7 magic cookie
MAX_FORWARDS = 70  # RFC 3261 s8.1.1.6
# RFC 3261 s12.2 and s14 (INVITE), RFC 3311 s5 (UPDATE): requests whose Contact
# replaces the remote target.
TARGET_REFRESH = frozenset(("INVITE", "UPDATE"))
# Requests that carry our Contact: the target refresh requests (s8.1.1.8,
# RFC 3311 s5.1) and those of RFC 6665 (SUBSCRIBE, NOTIFY) and RFC 3515 (REFER).
CONTACT_METHODS = frozenset(("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"))
# RFC 3261 s8.1.1.5: a CSeq number is below 2**31.
CSEQ_LIMIT = 2**31
# Initial local CSeq of a UAS dialog when none is given (s12.2.1.1 / s8.1.1.5):
# random below this, which leaves room for 2**31 - 2**20 requests.
INITIAL_CSEQ_RANGE = 2**20
# Headers a dialog writes itself; passing them in ``headers`` is a mistake.
_OWNED = frozenset(("via", "from", "to", "call-id", "cseq", "route", "content-length"))

DialogId = tuple[str, str, str]  # (Call-ID, local tag, remote tag)


class DialogState(StrEnum):
    """RFC 3261 s12: early (after a 101-199 with a To tag), confirmed (after a
    2xx), terminated (BYE, a failure of the initial INVITE, or 481/408)."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


# --------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------
def new_branch() -> str:
    """A Via branch for a new transaction: the magic cookie, then 64 random bits
    (RFC 3261 s8.1.1.7: unique across space and time)."""
    return COOKIE + random_hex(8)


def new_tag() -> str:
    """A From/To tag: 64 random bits, more than the 32 of RFC 3261 s19.3."""
    return random_hex(8)


def new_call_id(host: str = "", node: str = "") -> str:
    """A Call-ID: 128 random bits, ``@host`` when ``host`` is given (RFC 3261 s8.1.1.4);
    ``-node`` after them names the node that made it (several engine processes
    behind one edge: logs, and the dialog records, say whose call it is)."""
    local = random_hex(16)
    if node:
        local = f"{local}-{node}"
    return f"{local}@{host}" if host else local


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
_TAG_PARAM = re.compile(r";[ \t]*tag[ \t]*=[ \t]*[^;\s]*", re.IGNORECASE)


def _without_tag(value: str, what: str) -> str:
    """A From/To value without its tag parameter, as a name-addr (s12.1.1, s12.1.2)."""
    gt = value.rfind(">")
    if gt >= 0 and "<" in value[:gt]:
        # name-addr: the header parameters follow the '>'; the text before is kept as is
        # (hot path: every call leg builds two of these).
        parse_address(value, what)  # still refuse what does not parse
        return (value[: gt + 1] + _TAG_PARAM.sub("", value[gt + 1:])).strip()
    addr = parse_address(value, what)
    params = tuple(p for p in addr.params if p[0] != "tag")
    return str(Address(addr.uri, addr.display, params, True))


def _with_tag(value: str, tag: str) -> str:
    return f"{value};tag={tag}" if tag else value


def _contact_value(contact: str) -> str:
    """A Contact header value: a bare URI is put in angle brackets."""
    contact = contact.strip()
    if not contact:
        return ""
    return contact if "<" in contact else f"<{contact}>"


def _contact_uri(msg: Request | Response) -> str | None:
    """The URI text of the first Contact, None when absent, unreadable or not SIP(S)
    (a dialog's remote target is a SIP or SIPS URI, s8.1.1.8)."""
    try:
        contacts = msg.contacts
    except ParseError:
        return None
    if not contacts or not contacts[0].uri.is_sip:
        return None
    return str(contacts[0].uri)


def _route_set(values: list[str], reverse: bool) -> tuple[str, ...]:
    """Record-Route values as a route set (s12.1.1 in order, s12.1.2 reversed).

    Each value is kept verbatim (URI parameters such as ``lr`` preserved); each
    must parse, else :class:`ParseError`.
    """
    for value in values:
        parse_address(value, "Record-Route")
    return tuple(reversed(values)) if reverse else tuple(values)


def _request_uri(uri_text: str) -> str:
    """``uri_text`` fit for a Request-URI: without the ``method`` parameter and
    the headers component, which RFC 3261 s19.1.1 (Table 1) forbids there."""
    uri = parse_uri(uri_text)
    if not uri.headers and uri.param("method") is None:
        return uri_text
    params = tuple(p for p in uri.params if p[0] != "method")
    return str(uri.with_params(params)._replace(headers=""))


def _is_loose(route: str) -> bool:
    return parse_address(route, "Route").uri.param("lr") is not None


def _via_host(host: str) -> str:
    """An IPv6 address in brackets, as a Via sent-by needs (s20.42, RFC 5118)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# --------------------------------------------------------------------------
# The dialog
# --------------------------------------------------------------------------
class Dialog:
    """One dialog (RFC 3261 s12): the state of one B2BUA call leg.

    ``local_uri`` / ``remote_uri`` are the From / To values (name-addr,
    display name kept, tag removed) our requests carry; the tags are stored
    apart, the empty string standing for an absent tag (s12.1.1). ``local_cseq``
    is the CSeq number of the last request we sent (or the initial value
    before any, see :meth:`uas`); ``remote_cseq`` the peer's last, None while
    empty. ``route_set`` holds Route header values in the order they are put
    in a request. ``local_contact`` is our Contact header value.

    The identity (:attr:`id`) must not change once the dialog is filed by it
    (the call layer's tables).
    """

    __slots__ = (
        "call_id",
        "local_contact",
        "local_cseq",
        "local_tag",
        "local_uri",
        "remote_cseq",
        "remote_tag",
        "remote_target",
        "remote_uri",
        "route_set",
        "secure",
        "state",
    )

    def __init__(self, *, call_id: str, local_tag: str, remote_tag: str, local_uri: str,
                 remote_uri: str, remote_target: str, local_cseq: int = 0,
                 remote_cseq: int | None = None, route_set: Iterable[str] = (),
                 local_contact: str = "", secure: bool = False,
                 state: DialogState = DialogState.EARLY) -> None:
        if not 0 <= local_cseq < CSEQ_LIMIT:
            raise ValueError(f"local CSeq {local_cseq} outside 0..2**31-1 (RFC 3261 s8.1.1.5)")
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.local_cseq = local_cseq
        self.remote_cseq = remote_cseq
        self.route_set = tuple(route_set)
        self.local_contact = _contact_value(local_contact)
        self.secure = secure
        self.state = state

    @property
    def id(self) -> DialogId:
        """The dialog ID (s12): Call-ID, local tag, remote tag."""
        return (self.call_id, self.local_tag, self.remote_tag)

    @property
    def early(self) -> bool:
        return self.state is DialogState.EARLY

    @property
    def confirmed(self) -> bool:
        return self.state is DialogState.CONFIRMED

    @property
    def terminated(self) -> bool:
        return self.state is DialogState.TERMINATED

    def __repr__(self) -> str:
        return (f"<Dialog {self.state.value} call_id={self.call_id!r} "
                f"local_tag={self.local_tag!r} remote_tag={self.remote_tag!r}>")

    # -- creation -------------------------------------------------------
    @classmethod
    def uac(cls, request: Request, response: Response, *,
            secure: bool | None = None) -> Dialog:
        """The dialog a UAC gets from ``response`` to its ``request`` (RFC 3261 s12.1.2).

        ``response`` is a 101-199 with a To tag (an early dialog) or a 2xx (a
        confirmed one). Route set: the response's Record-Route in reverse
        order; remote target: its Contact URI; local CSeq: the request's;
        remote CSeq: empty (None); local URI, tag and Contact: the request's
        From and Contact; remote URI: the request's To, remote tag the
        response's To tag ('' when a 2xx has none, s12.1.2 for RFC 2543 peers).

        Where the RFC leaves room: a response without a usable Contact (a
        sloppy 180) gets the request's Request-URI as remote target, so the
        dialog can still be used and a later 2xx refreshes it. ``secure``
        None means: the Request-URI is SIPS and the top Via transport is TLS.

        Raises ValueError (ParseError included) when the response cannot
        create a dialog or does not answer ``request``.
        """
        status = response.status
        if not (101 <= status <= 299):
            raise ValueError(f"a {status} response creates no dialog (RFC 3261 s12.1)")
        if response.call_id != request.call_id:
            raise ValueError("the response's Call-ID differs from the request's")
        local_tag = request.from_.tag
        if not local_tag:
            raise ValueError("the request's From has no tag (RFC 3261 s8.1.1.3)")
        if response.from_.tag != local_tag:
            raise ValueError("the response's From tag differs from the request's")
        remote_tag = response.to.tag or ""
        if status < 200 and not remote_tag:
            raise ValueError("a provisional response without a To tag creates no dialog "
                             "(RFC 3261 s12.1)")
        contact = request.get_all("contact")
        if not contact:
            raise ValueError("the request has no Contact (RFC 3261 s8.1.1.8)")
        target = _contact_uri(response) or request.uri_text
        if secure is None:
            secure = request.uri.scheme == "sips" and request.top_via.transport == "TLS"
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=_without_tag(request.get("from") or "", "From"),
            remote_uri=_without_tag(request.get("to") or "", "To"),
            remote_target=target,
            local_cseq=request.cseq.number,
            remote_cseq=None,
            route_set=_route_set(response.get_all("record-route"), reverse=True),
            local_contact=contact[0],
            secure=secure,
            state=DialogState.EARLY if status < 200 else DialogState.CONFIRMED,
        )

    @classmethod
    def uas(cls, request: Request, local_tag: str, local_contact: str,
            confirmed: bool = False, *, local_cseq: int | None = None,
            secure: bool | None = None) -> Dialog:
        """The dialog a UAS creates by answering ``request`` (RFC 3261 s12.1.1).

        ``local_tag`` is the To tag our responses carry; ``local_contact``
        the Contact they carry. The dialog is early (we send a 101-199 with
        that tag) unless ``confirmed`` (we send a 2xx); move it on with
        :meth:`on_response_sent`. Route set: the request's Record-Route in
        order; remote target: its Contact URI; remote CSeq: its CSeq; remote
        URI and tag: its From; local URI: its To.

        The local CSeq is empty in the RFC until our first request, whose
        initial number is then chosen freely (s12.2.1.1, s8.1.1.5): here it
        is fixed at creation, ``local_cseq`` when given (0 makes the first
        request CSeq 1, as in RFC 3665), else random below 2**20 so that
        two dialogs of one call do not share a number sequence. ``secure``
        None means: the Request-URI is SIPS and the top Via transport is TLS.

        Raises ValueError (ParseError included) when the request already
        has a To tag (it is in a dialog), has no SIP(S) Contact, or
        ``local_tag`` is empty.
        """
        if not local_tag:
            raise ValueError("a UAS dialog needs a local tag (RFC 3261 s12.1.1)")
        if request.to.tag:
            raise ValueError("the request has a To tag: it belongs to an existing dialog")
        target = _contact_uri(request)
        if target is None:
            raise ValueError("the request has no SIP or SIPS Contact (RFC 3261 s8.1.1.8)")
        if local_cseq is None:
            local_cseq = random_below(INITIAL_CSEQ_RANGE)
        if secure is None:
            secure = request.uri.scheme == "sips" and request.top_via.transport == "TLS"
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_uri=_without_tag(request.get("to") or "", "To"),
            remote_uri=_without_tag(request.get("from") or "", "From"),
            remote_target=target,
            local_cseq=local_cseq,
            remote_cseq=request.cseq.number,
            route_set=_route_set(request.get_all("record-route"), reverse=False),
            local_contact=local_contact,
            secure=secure,
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
        )

    # -- sending --------------------------------------------------------
    def _target(self) -> tuple[str, list[str]]:
        """Request-URI and Route values (RFC 3261 s12.2.1.1).

        Empty route set: the remote target, no Route. First route loose
        (``lr``): the remote target, Route = the route set. First route
        strict: that route's URI (without parameters a Request-URI may not
        carry), Route = the other routes then the remote target.
        """
        if not self.route_set:
            return _request_uri(self.remote_target), []
        first = self.route_set[0]
        if _is_loose(first):
            return _request_uri(self.remote_target), list(self.route_set)
        uri = parse_address(first, "Route").uri
        return (_request_uri(str(uri)),
                [*self.route_set[1:], f"<{self.remote_target}>"])

    def _build(self, method: str, cseq: int, *, via_host: str, via_port: int,
               transport: str, headers: Iterable[tuple[str, str]], body: bytes,
               content_type: str | None, contact: bool) -> Request:
        extra = list(headers)
        keys = {header_key(name) for name, _ in extra}
        owned = sorted(keys & _OWNED)
        if owned:
            raise ValueError(f"the dialog writes {', '.join(owned)} itself; do not pass them")
        if content_type is not None:
            if "content-type" in keys:
                raise ValueError("Content-Type given twice (content_type and headers)")
            extra.append(("Content-Type", content_type))
        elif body and "content-type" not in keys:
            raise ValueError("a body needs a Content-Type (RFC 3261 s20.15)")
        uri, routes = self._target()
        out: list[tuple[str, str]] = [
            ("Via", f"SIP/2.0/{transport.upper()} {_via_host(via_host)}:{via_port}"
                    f";branch={new_branch()};rport"),
        ]
        if "max-forwards" not in keys:
            out.append(("Max-Forwards", str(MAX_FORWARDS)))
        out += [("Route", route) for route in routes]
        out += [
            ("From", _with_tag(self.local_uri, self.local_tag)),
            ("To", _with_tag(self.remote_uri, self.remote_tag)),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if contact and self.local_contact and "contact" not in keys:
            out.append(("Contact", self.local_contact))
        out += extra
        out.append(("Content-Length", str(len(body))))
        return Request.build(method, uri, out, body)

    def new_request(self, method: str, *, via_host: str, via_port: int,
                    transport: str = "UDP", headers: Iterable[tuple[str, str]] = (),
                    body: bytes = b"", content_type: str | None = None) -> Request:
        """A new request inside the dialog (RFC 3261 s12.2.1.1).

        Request-URI and Route from the remote target and route set (see
        :meth:`_target`); To = remote URI and tag, From = local URI and tag;
        the dialog's Call-ID; CSeq = the local CSeq plus one (stored back);
        Max-Forwards 70; our Contact for the methods of
        :data:`CONTACT_METHODS`; a fresh Via ``SIP/2.0/<transport>
        host:port;branch=z9hG4bK...;rport`` (s8.1.1.7, RFC 3581);
        Content-Length of ``body``.

        ``headers`` are appended; they may override Max-Forwards (a B2BUA
        passing the other leg's on) and Contact, not the headers the dialog
        owns (Via, From, To, Call-ID, CSeq, Route, Content-Length). A body
        needs ``content_type`` or a Content-Type in ``headers``.

        ACK and CANCEL are refused (ValueError): the ACK to a 2xx comes from
        :meth:`ack` with the INVITE's CSeq; a CANCEL is built from the request
        it cancels, with its Via branch (s9.1), not from the dialog. A request
        on a terminated dialog is refused too.
        """
        method = method.upper()
        if method == "ACK":
            raise ValueError("build the ACK to a 2xx with Dialog.ack() (RFC 3261 s13.2.2.4)")
        if method == "CANCEL":
            raise ValueError("a CANCEL copies the request it cancels (RFC 3261 s9.1), "
                             "not the dialog")
        if self.state is DialogState.TERMINATED:
            raise ValueError("the dialog is terminated")
        cseq = self.local_cseq + 1
        if cseq >= CSEQ_LIMIT:
            raise ValueError("local CSeq exhausted (RFC 3261 s8.1.1.5: below 2**31)")
        request = self._build(method, cseq, via_host=via_host, via_port=via_port,
                              transport=transport, headers=headers, body=body,
                              content_type=content_type, contact=method in CONTACT_METHODS)
        self.local_cseq = cseq
        return request

    def ack(self, invite_cseq: int, *, via_host: str, via_port: int, transport: str = "UDP",
            headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
            content_type: str | None = None) -> Request:
        """The ACK for a 2xx to the INVITE whose CSeq number is ``invite_cseq``
        (RFC 3261 s13.2.2.4).

        Built as any in-dialog request (same Request-URI, Route, From, To,
        Call-ID) but with the INVITE's CSeq number and method ACK, and a new
        Via branch (the ACK to a 2xx is a transaction of its own, s17.1.1.3).
        The local CSeq is not incremented. No Contact. ``body`` is the SDP
        answer when the INVITE had no offer (s13.2.2.4).

        Keep the result: a retransmitted 2xx is answered with the same ACK
        bytes, not a new one (s13.2.2.4).
        """
        if not 0 <= invite_cseq <= self.local_cseq:
            raise ValueError(f"INVITE CSeq {invite_cseq} was never sent in this dialog "
                             f"(local CSeq {self.local_cseq})")
        return self._build("ACK", invite_cseq, via_host=via_host, via_port=via_port,
                           transport=transport, headers=headers, body=body,
                           content_type=content_type, contact=False)

    def next_hop(self) -> tuple[str, int | None, str]:
        """Where in-dialog requests go: (host, port or None, transport).

        The first route's URI when there is a route set (s8.1.2, s12.2.1.1:
        the first Route, or with a strict router the Request-URI, which is
        that route too), else the remote target. RFC 3263 s4 without DNS:
        ``maddr`` wins over the host; the transport is the lowercased
        ``transport`` parameter, by default ``udp`` for a SIP URI and ``tls``
        for a SIPS one (s26.2.2; a SIPS URI with ``transport=tcp`` also
        means TLS). The host is returned without IPv6 brackets, the port is
        None when the URI has none (the caller applies 5060/5061 or SRV).
        """
        if self.route_set:
            uri = parse_address(self.route_set[0], "Route").uri
        else:
            uri = parse_uri(self.remote_target)
        if not uri.is_sip:
            raise ValueError(f"next hop {uri!s:.80}: not a SIP or SIPS URI")
        host = uri.param("maddr") or uri.host
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        transport = (uri.param("transport") or "").lower()
        if uri.scheme == "sips":
            if transport in ("", "tcp", "tls"):
                transport = "tls"
        elif not transport:
            transport = "udp"
        return host.lower(), uri.port, transport

    # -- receiving ------------------------------------------------------
    def on_request(self, request: Request) -> int | None:
        """Check and apply an in-dialog request from the peer (RFC 3261 s12.2.2).

        Returns the status to answer it with, None when it may be processed:

        * 481 when the dialog is terminated (s12.2.2);
        * 500 when its CSeq number is lower than or equal to the remote CSeq
          (out of order; s12.2.2 requires lower, equal is refused too since
          the transaction layer already absorbed retransmissions), except
          ACK and CANCEL, which reuse their INVITE's number;
        * 400 for a target refresh request (:data:`TARGET_REFRESH`) whose
          Contact is present but not a readable SIP(S) URI;

        and nothing is changed then. Otherwise the remote CSeq is updated
        (not for ACK/CANCEL), a target refresh request with a Contact
        replaces the remote target (s12.2.2; on receipt, as RFC 3261 says,
        not on our 2xx as RFC 6141 s3.2 refines it), and a BYE terminates
        the dialog (s15.1.2).
        """
        if self.state is DialogState.TERMINATED:
            return 481
        method = request.method
        if method in ("ACK", "CANCEL"):
            return None
        number = request.cseq.number
        if self.remote_cseq is not None and number <= self.remote_cseq:
            return 500
        target: str | None = None
        if method in TARGET_REFRESH and request.has("contact"):
            target = _contact_uri(request)
            if target is None:
                return 400
        self.remote_cseq = number
        if target is not None:
            self.remote_target = target
        if method == "BYE":
            self.state = DialogState.TERMINATED
        return None

    def on_response(self, request_method: str, response: Response) -> None:
        """Apply a response to a request we sent in this dialog.

        * 2xx to INVITE on an early dialog (the initial INVITE): confirmed;
          the route set is recomputed from the 2xx's Record-Route, reversed
          (s13.2.2.4 via s12.1.2: the 2xx, not the 1xx, fixes it) and the
          remote target taken from its Contact;
        * 2xx to a target refresh request (a re-INVITE, an UPDATE): the
          remote target is replaced by the Contact, if present (s12.2.1.2);
          the route set is not touched;
        * 481 or 408 (s12.2.1.2), any final response to a BYE (s15.1.1), and
          a 300-699 to the initial INVITE of an early dialog (s12.3, s13.2.2.3
          via s12.1.2: the early dialog ends with the transaction): terminated.

        A failed re-INVITE or UPDATE leaves the dialog as it was (s14.1).
        Provisional responses change nothing. Header values that cannot be
        read (a garbled Contact or Record-Route) leave the dialog state as it
        was rather than raise: this is network input.
        """
        method = request_method.upper()
        status = response.status
        if status < 200 or self.state is DialogState.TERMINATED:
            return
        if status < 300:
            if method == "BYE":
                self.state = DialogState.TERMINATED
                return
            if method not in TARGET_REFRESH:
                return
            if method == "INVITE" and self.state is DialogState.EARLY:
                with contextlib.suppress(ParseError):  # keep the 1xx's route set
                    self.route_set = _route_set(response.get_all("record-route"),
                                                reverse=True)
                self.state = DialogState.CONFIRMED
            target = _contact_uri(response)
            if target is not None:
                self.remote_target = target
            return
        initial_failed = method == "INVITE" and self.state is DialogState.EARLY
        if status in (408, 481) or method == "BYE" or initial_failed:
            self.state = DialogState.TERMINATED

    def on_response_sent(self, request_method: str, status: int) -> None:
        """Apply a final response we send to the peer's request (UAS side).

        A 2xx to INVITE confirms an early dialog (s12.1.1, s13.3.1.4); a
        300-699 to INVITE on an early dialog ends it (s12.3: the initial
        INVITE failed). A failed re-INVITE changes nothing (s14.2).
        """
        if request_method.upper() != "INVITE" or self.state is not DialogState.EARLY:
            return
        if 200 <= status < 300:
            self.state = DialogState.CONFIRMED
        elif status >= 300:
            self.state = DialogState.TERMINATED

    def terminate(self) -> None:
        """End the dialog: a BYE sent or timed out, a call torn down (s15)."""
        self.state = DialogState.TERMINATED
