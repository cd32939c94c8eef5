"""The call layer: every call the engine routes, sans-I/O (docs/architecture.md)."""
