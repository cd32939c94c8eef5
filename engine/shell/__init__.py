"""The process shell: sockets, the timer, overload and connection policies, admin
HTTP and metrics; the only asyncio code of the SIP side."""
