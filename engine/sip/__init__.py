"""The SIP protocol, sans-I/O: parser and serializer, transactions (RFC 3261 s17),
dialogs (s12), digest authentication and the registrar."""
