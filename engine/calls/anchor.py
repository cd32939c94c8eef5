"""The media anchor of one call: the engine's RTP endpoints and their SDP.

Each call has one :class:`MediaAnchor`. It holds the endpoints the media
service opened for the call (the one facing the caller, and on a relayed call
the one facing the callees), and the offer/answer on each side (RFC 3264),
the engine speaking for itself under its own ``o=`` line on each side
(:class:`MediaSide`). It knows nothing of SIP: the call asks it for the SDP to
send and tells it what came back.

Two uses, one object:

* **relay** (``serve --media relay``, a call whose INVITE has an SDP offer with
  audio): the callees are offered the engine's callee-side address; the
  caller is answered, from the caller-side address, with the codec the callee
  chose, so packets are relayed untouched (the engine does not transcode). A
  re-INVITE or UPDATE from either side is answered here (RFC 3264 s8): a hold
  (sendonly, inactive, c=0.0.0.0; s8.4) stops the relay and plays hold music
  to the other side. :meth:`MediaAnchor.bridge` turns the state into the
  :class:`~engine.calls.events.BridgeMedia` the media service applies.
* **endpoint**: the engine answers the caller itself (voicemail, the mailbox
  menu, music while a ring group rings) from the caller-side address, with a
  codec it can decode (:data:`DECODABLE`).

SDES-SRTP (RFC 4568): each side has its own fresh key (:meth:`MediaSide.srtp_key`),
used in our answers and offers on that side only when that side may use SRTP
(``srtp_ok``: the caller's INVITE came over TLS and its user allows it; a callee
leg was offered SAVP), so the media service protects each leg on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.calls.events import BridgeMedia, CallKey, ScreenMode
from engine.sip.message import random_below
from media import sdp, srtp

__all__ = ["DECODABLE", "MediaAnchor", "MediaSide", "callee_answer"]

DECODABLE = frozenset({"PCMU", "PCMA", "G722"})  # what the engine can play and record


@dataclass(slots=True, eq=False)
class MediaSide:
    """One side of the anchor: the endpoint facing the caller, or the callees.

    ``session``/``version``: our ``o=`` line on this side (RFC 3264 s8: the same
    session, the version one up with each new description); ``media``: what the
    endpoint negotiated; ``sdp``: our last description to that side; ``holds``:
    that side put the other on hold (the other hears music from us)."""

    port: int = 0
    session: int = field(default_factory=lambda: random_below(10**9))
    version: int = 0
    media: sdp.Negotiated | None = None
    sdp: sdp.SessionDescription | None = None
    holds: bool = False
    srtp_ok: bool = False  # SAVP may be answered/offered on this side
    srtp_required: bool = False  # plain RTP is refused on this side (user srtp "required")
    key: bytes = b""  # our SRTP key||salt on this side, drawn when first needed

    def srtp_key(self) -> bytes | None:
        """Our key on this side when it may use SRTP (drawn once: a re-INVITE keeps
        it, so the endpoint's SRTP context survives)."""
        return self.offer_key() if self.srtp_ok else None

    def offer_key(self) -> bytes:
        """Our key on this side for an SRTP offer (drawn once, as :meth:`srtp_key`),
        without letting this side's present party answer SAVP: a transfer's target
        is offered it before it takes the side (:meth:`MediaAnchor.take_side`)."""
        if not self.key:
            self.key = srtp.new_key()
        return self.key

    def next_origin(self) -> tuple[int, int]:
        """(session, version) for our next description on this side."""
        self.version += 1
        return self.session, self.version

    def forget(self) -> None:
        """Nothing negotiated on this side (its party is gone)."""
        self.media = self.sdp = None


@dataclass(slots=True, eq=False)
class MediaAnchor:
    """The engine's media for one call (see the module docstring)."""

    # The caller's latest offer when RTP is relayed through the engine; None: the
    # SDP passes end to end (or the engine answers the caller itself).
    offer: sdp.SessionDescription | None = None
    open: bool = False  # the endpoints asked for are open (media_ready)
    caller: MediaSide = field(default_factory=MediaSide)
    callee: MediaSide = field(default_factory=MediaSide)
    record: str = ""  # why the call is recorded ("" not recorded)
    # The caller hears music while its ring group rings, in this codec (the callees
    # are then offered only that one).
    music_codec: str = ""

    @property
    def relaying(self) -> bool:
        return self.offer is not None

    @property
    def caller_port(self) -> int:
        return self.caller.port

    @property
    def callee_port(self) -> int:
        return self.callee.port

    def side(self, caller: bool) -> MediaSide:
        return self.caller if caller else self.callee

    # -- life ---------------------------------------------------------------
    def wants_relay(self, body: bytes) -> str | None:
        """Relay the call whose INVITE carries ``body``: returns None when it will
        (open two endpoints first), else why not ("" when there is nothing to say:
        no offer, no audio, already anchored)."""
        if self.relaying or self.open or not body:
            return ""
        try:
            offer = sdp.parse_sdp(body)
        except sdp.SdpError as exc:
            return exc.message
        if offer.audio() is None:
            return ""
        self.offer = offer
        return None

    def opened(self, ports: tuple[int, ...]) -> None:
        """The media service opened the endpoints: the caller's side first."""
        self.open = True
        self.caller.port = ports[0]
        self.callee.port = ports[1] if len(ports) > 1 else 0

    def stop_relay(self) -> bool:
        """RTP goes end to end after all; True when the open endpoints must close."""
        self.offer = None
        for side in (self.caller, self.callee):
            side.forget()
            side.holds = False
        self.record = ""
        was_open, self.open = self.open, False
        return was_open

    # -- offers to the callees ----------------------------------------------------
    def callee_offer(self, host: str, codecs: Sequence[str] | None, only: str,
                     sendrecv: bool, srtp: bool = False) -> sdp.SessionDescription | None:
        """The caller's offer as we make it to a callee: our callee-side address and
        ``o=`` line, codecs in ``codecs``' order (a user's; None: the caller's),
        only ``only`` when the caller is already in a codec (answered early, or
        in a call being transferred), ``sendrecv`` whoever held the call; ``srtp``:
        RTP/SAVP with our callee-side key (an SRTP user over TLS), else plain RTP."""
        offer = self.offer
        if offer is None or not self.callee.port:
            return None
        if srtp:
            self.callee.srtp_ok = True
            key = self.callee.srtp_key()
            assert key is not None
            offer = sdp.with_srtp(offer, key)
        else:
            offer = sdp.without_srtp(offer)
        offer = sdp.with_connection(offer, host, self.callee.port)
        if codecs is not None:
            offer = sdp.with_codec_order(offer, codecs)
        if only:
            offer = sdp.with_codec_order(offer, [only])
        if sendrecv:
            offer = sdp.with_direction(offer, "sendrecv")
        session, version = self.callee.next_origin()
        return sdp.with_origin(offer, session, version, host)

    def caller_side_offer(self, host: str, codec: str,
                          srtp: bool = False) -> sdp.SessionDescription | None:
        """The offer to a party taking the caller's place (a transfer by the caller):
        the caller-side address, ``codec`` only, our caller-side ``o=`` session
        (which our later answers on that side continue); ``srtp``: RTP/SAVP with our
        caller-side key (an SRTP user over TLS), else plain RTP. The caller's latest
        offer may have been its hold (sendonly) before the REFER: the target is
        offered the engine's endpoint, which sends and receives."""
        offer = self.offer
        if offer is None or not self.caller.port:
            return None
        offer = sdp.with_srtp(offer, self.caller.offer_key()) if srtp else \
            sdp.without_srtp(offer)
        offer = sdp.with_connection(offer, host, self.caller.port)
        offer = sdp.with_codec_order(offer, [codec])
        offer = sdp.with_direction(offer, "sendrecv")
        session, version = self.caller.next_origin()
        return sdp.with_origin(offer, session, version, host)

    # -- answers to the caller ----------------------------------------------------
    def connect(self, callee: sdp.Negotiated, offered: sdp.SessionDescription | None,
                host: str) -> sdp.SessionDescription | sdp.AnswerRefused:
        """A callee answered our ``offered`` and negotiated ``callee``: our answer to
        the caller's offer in the callee's codec; both sides are then set."""
        assert self.offer is not None
        session, version = self.caller.next_origin()
        ours = sdp.answer(self.offer, [callee.codec], address=host, port=self.caller.port,
                          session_id=session, session_version=version,
                          srtp_key=self.caller.srtp_key(),
                          require_srtp=self.caller.srtp_required)
        if isinstance(ours, sdp.AnswerRefused):
            return ours
        self.caller.media = sdp.negotiated(self.offer, ours)
        self.caller.sdp = ours
        self.callee.media = callee
        self.callee.sdp = offered
        return ours

    def can_connect(self, codec: str, host: str) -> sdp.AnswerRefused | None:
        """Whether the caller's offer has ``codec`` (checked before a callee is
        asked to confirm, so that a 1 always connects): None when it has."""
        assert self.offer is not None
        ours = sdp.answer(self.offer, [codec], address=host, port=self.caller.port,
                          session_id=self.caller.session,
                          session_version=self.caller.version + 1,
                          srtp_key=self.caller.srtp_key(),
                          require_srtp=self.caller.srtp_required)
        return ours if isinstance(ours, sdp.AnswerRefused) else None

    def ask(self, callee: sdp.Negotiated, offered: sdp.SessionDescription | None) -> None:
        """A callee is asked to confirm on the callee-side endpoint, not yet connected."""
        self.callee.media = callee
        self.callee.sdp = offered

    def endpoint_answer(self, body: bytes, codecs: Sequence[str], host: str,
                        ) -> tuple[sdp.SessionDescription, sdp.Negotiated] | str:
        """Our answer where the engine is the caller's endpoint (voicemail, mailbox,
        music while ringing): ``codecs`` in their order, among what we can decode
        (:data:`DECODABLE`), from the caller-side port; a str says why not."""
        try:
            offer = sdp.parse_sdp(body)
        except sdp.SdpError as exc:
            return f"unreadable SDP offer: {exc.message}"
        session, version = self.caller.next_origin()
        answer = sdp.answer(offer, codecs, address=host, port=self.caller.port,
                            session_id=session, session_version=version,
                            can_decode=DECODABLE, srtp_key=self.caller.srtp_key(),
                            require_srtp=self.caller.srtp_required)
        if isinstance(answer, sdp.AnswerRefused):
            return answer.reason
        return answer, sdp.negotiated(offer, answer)

    def ring_with_music(self, body: bytes, codecs: Sequence[str],
                        host: str) -> sdp.SessionDescription | str:
        """The caller hears music while it rings: our early answer (183) in a codec
        the engine can play; the callees are then offered only that codec, so
        whoever answers is relayed without transcoding. A str says why not ("" when
        the codec of an earlier answer cannot be played)."""
        if self.caller.media is None:
            result = self.endpoint_answer(body, codecs, host)
            if isinstance(result, str):
                return result
            self.caller.sdp, self.caller.media = result
        elif self.caller.media.codec.upper() not in DECODABLE:
            return ""
        self.music_codec = self.caller.media.codec
        assert self.caller.sdp is not None
        return self.caller.sdp

    # -- offers from either side --------------------------------------------------
    def on_offer(self, from_caller: bool, offer: sdp.SessionDescription, host: str,
                 ) -> tuple[sdp.SessionDescription, bool] | sdp.AnswerRefused:
        """A re-INVITE or UPDATE offer from one side, answered by us in the codec the
        call has (RFC 3264 s8): (our answer, whether that side's hold changed)."""
        side = self.side(from_caller)
        current = side.media
        assert current is not None
        session, version = side.next_origin()
        ours = sdp.answer(offer, [current.codec], address=host, port=side.port,
                          session_id=session, session_version=version,
                          srtp_key=side.srtp_key(), require_srtp=side.srtp_required)
        if isinstance(ours, sdp.AnswerRefused):
            return ours
        media = sdp.negotiated(offer, ours)
        holds = offer.stream(media.index).is_hold()
        if from_caller:
            self.offer = offer
        side.media, side.sdp = media, ours
        changed = holds != side.holds
        side.holds = holds
        return ours, changed

    def take_side(self, caller: bool, media: sdp.Negotiated,
                  ours: sdp.SessionDescription | None,
                  offer: sdp.SessionDescription | None = None,
                  origin: tuple[int, int] | None = None) -> None:
        """A new party on one side (a transfer connected it): it negotiated
        ``media`` with our ``ours``; on the caller's side its ``offer`` is the
        caller's now; ``origin``: the (session, version) it knows us by."""
        side = self.side(caller)
        if caller:
            assert offer is not None
            self.offer = offer
            # The caller's SRTP rules were the caller's, not its: it may use SRTP on
            # this side when it was offered SAVP (caller_side_offer, rules.leg_srtp),
            # as a callee offered SAVP may on the other.
            side.srtp_ok = ours is not None and sdp.offers_srtp(ours)
            side.srtp_required = False
        side.media, side.sdp, side.holds = media, ours, False
        if origin is not None:
            side.session, side.version = origin

    # -- the media service's view -------------------------------------------------
    @property
    def holder_is_caller(self) -> bool:
        """Who put the call on hold, for the playlist (the caller when both or none)."""
        return self.caller.holds or not self.callee.holds

    def bridge(self, call: CallKey, call_id: str, *, routing: bool, ringing: bool,
               screen: ScreenMode, announce: str, language: str, transferee: str,
               playlist: tuple[str, ...], parties: tuple[str, str]) -> BridgeMedia | None:
        """The media state for the media service; None when there is nothing to
        relay (not relaying, or the endpoints are not open yet).

        ``routing``: a plan runs (callees ring); ``ringing``: the caller's own plan
        (not a transfer's); ``screen``: how the callee side is being asked;
        ``transferee``: "caller" or "callee" when that party waits, with hold music,
        for a transfer's target ("" none)."""
        if not self.relaying or not self.open:
            return None
        music_to_caller = self.callee.holds or screen == "rebound" or (
            routing and bool(self.music_codec)) or transferee == "caller"
        return BridgeMedia(
            call, call_id, self.caller.media, self.callee.media,
            music_to_caller=music_to_caller,
            music_to_callee=self.caller.holds or transferee == "callee",
            playlist=playlist, record=self.record, parties=parties,
            announce=announce, language=language, screen=screen,
            ringback_to_caller=ringing and not music_to_caller
            and self.caller.media is not None
            and (screen == "confirm" or self.callee.media is None))


def callee_answer(offered: sdp.SessionDescription, body: bytes,
                  early: sdp.SessionDescription | None,
                  ) -> tuple[sdp.SessionDescription, sdp.Negotiated] | str:
    """A callee's SDP answer to our ``offered`` (in ``body``, else the one its 183
    carried, ``early``) and what it negotiates; a str says why it cannot be used."""
    try:
        theirs = sdp.parse_sdp(body) if body else early
        if theirs is None:
            raise sdp.SdpError("the answer has no SDP (and no 183 carried one)")
        return theirs, sdp.negotiated(offered, theirs, local="offerer")
    except sdp.SdpError as exc:
        return exc.message
