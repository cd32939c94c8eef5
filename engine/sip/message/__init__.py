"""Sans-I/O SIP messages: parse, inspect, build and serialize (RFC 3261 s7, s20, s25).

No socket, clock or event loop here: bytes in, objects out, and back.
"""

from engine.sip.message.core import (
    Header,
    Message,
    Request,
    Response,
    StreamFramer,
    make_response,
    parse,
    random_below,
    random_bytes,
    random_hex,
    short_text,
    warning_value,
)
from engine.sip.message.grammar import (
    URI,
    Address,
    CSeq,
    ParseError,
    Via,
    parse_address,
    parse_cseq,
    parse_params,
    parse_uri,
    parse_via,
    split_commas,
    unquote,
)
from engine.sip.message.validate import check_request

__all__ = [
    "URI",
    "Address",
    "CSeq",
    "Header",
    "Message",
    "ParseError",
    "Request",
    "Response",
    "StreamFramer",
    "Via",
    "check_request",
    "make_response",
    "parse",
    "parse_address",
    "parse_cseq",
    "parse_params",
    "parse_uri",
    "parse_via",
    "random_below",
    "random_bytes",
    "random_hex",
    "short_text",
    "split_commas",
    "unquote",
    "warning_value",
]
