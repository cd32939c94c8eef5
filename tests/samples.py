"""Sample SIP messages shared by the tests and the parser benchmark (benchmarks/parser.py).

Plain bytes, CRLF line ends, Content-Length matching the body.
"""

from __future__ import annotations

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
       b"m=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")


def trunk_invite(extra: bytes = b"", body: bytes = SDP) -> bytes:
    """An INVITE from a carrier trunk; ``extra`` header lines go before Content-Type."""
    return (b"INVITE sip:+18195550100@pbx.example.test SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK776asdhds;rport\r\n"
            b"Max-Forwards: 70\r\n"
            b"To: <sip:+18195550100@pbx.example.test>\r\n"
            b'From: "Carrier" <sip:+15145550199@127.0.0.2>;tag=1928301774\r\n'
            b"Call-ID: a84b4c76e66710@pc33.example.test\r\n"
            b"CSeq: 314159 INVITE\r\n"
            b"Contact: <sip:+15145550199@127.0.0.2:5060>\r\n"
            + extra
            + b"Content-Type: application/sdp\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


TRUNK_INVITE = trunk_invite(b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
                            b"User-Agent: carrier-sbc/1.0\r\n")

# From a desk phone, through an outbound proxy route, with proxy credentials.
PHONE_INVITE = (
    b"INVITE sip:102@pbx.example.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.1.20:5062;rport;branch=z9hG4bK1482871427\r\n"
    b"Route: <sip:pbx.example.test;lr>\r\n"
    b'From: "Alice Martin" <sip:101@pbx.example.test>;tag=1590186367\r\n'
    b"To: <sip:102@pbx.example.test>\r\n"
    b"Call-ID: 1337426432@192.168.1.20\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Contact: <sip:101@192.168.1.20:5062;transport=udp>\r\n"
    b'Proxy-Authorization: Digest username="101", realm="pbx.example.test", '
    b'nonce="abc", uri="sip:102@pbx.example.test", response="0123456789abcdef", '
    b"algorithm=MD5, cnonce=\"x\", qop=auth, nc=00000001\r\n"
    b"Max-Forwards: 70\r\n"
    b"User-Agent: Yealink SIP-T46S 66.86.0.15\r\n"
    b"Supported: replaces, timer\r\n"
    b"Allow: INVITE, ACK, OPTIONS, CANCEL, BYE, REFER, NOTIFY, INFO, UPDATE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP)

PHONE_REGISTER = (
    b"REGISTER sip:pbx.example.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.1.20:5062;rport;branch=z9hG4bK1958421604\r\n"
    b'From: "Alice Martin" <sip:101@pbx.example.test>;tag=2104563251\r\n'
    b"To: <sip:101@pbx.example.test>\r\n"
    b"Call-ID: 0_2290743620@192.168.1.20\r\n"
    b"CSeq: 7 REGISTER\r\n"
    b"Contact: <sip:101@192.168.1.20:5062>;expires=3600\r\n"
    b"Max-Forwards: 70\r\n"
    b"User-Agent: Yealink SIP-T46S 66.86.0.15\r\n"
    b"Expires: 3600\r\n"
    b"Allow: INVITE, ACK, OPTIONS, CANCEL, BYE, REFER, NOTIFY, INFO, UPDATE\r\n"
    b"Content-Length: 0\r\n\r\n")
