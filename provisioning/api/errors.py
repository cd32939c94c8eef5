"""One error shape for every refusal of the admin API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["ApiError", "FieldError"]

FieldError = tuple[str, str]  # (path, message); path "" when no field is at fault


class ApiError(Exception):
    """A refusal: an HTTP status and the errors, each naming its field.

    Rendered as ``{"errors": [{"path": "users[3].name", "message": "..."}]}``.
    """

    def __init__(self, status: int, errors: Iterable[FieldError] | str,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.errors: list[FieldError] = ([("", errors)] if isinstance(errors, str)
                                         else list(errors))
        self.headers = dict(headers or {})
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in self.errors))

    def body(self) -> dict[str, object]:
        return {"errors": [{"path": p, "message": m} for p, m in self.errors]}
