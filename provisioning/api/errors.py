"""One error shape for every refusal of the admin API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["ApiError", "FieldError"]

FieldError = tuple[str, str]  # (path, message); path "" when no field is at fault


class ApiError(Exception):
    """A refusal: an HTTP status and the errors, each naming its field.

    Rendered as ``{"errors": [{"path": "users[3].name", "message": "..."}]}``; a
    refusal about the directory's revision (412) adds ``"revision"``, the current one
    (also its ``ETag``), so a client can show what changed and retry on it.
    """

    def __init__(self, status: int, errors: Iterable[FieldError] | str,
                 headers: Mapping[str, str] | None = None,
                 revision: int | None = None) -> None:
        self.status = status
        self.revision = revision
        self.errors: list[FieldError] = ([("", errors)] if isinstance(errors, str)
                                         else list(errors))
        self.headers = dict(headers or {})
        if revision is not None:
            self.headers.setdefault("ETag", f'"{revision}"')
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in self.errors))

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {"errors": [{"path": p, "message": m}
                                             for p, m in self.errors]}
        if self.revision is not None:
            out["revision"] = self.revision
        return out
