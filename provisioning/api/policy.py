"""The five roles: what each may read and change.

=================  ==========================================================
``user``           their own record: status, forwarding, schedule, greetings,
                   voicemail PIN, web password; their voicemail and recordings
``receptionist``   a user who also sees their department's users, statuses and
                   calls in progress, and sets the statuses of its users
``department_admin`` manages their department: its users (up to the
                   department_admin role), the routing of its numbers, its ring
                   groups, its office hours
``manager``        reads everything but trunks; changes users, numbers,
                   departments and ring groups; no trunk or system changes;
                   never makes or edits an owner
``owner``          everything
=================  ==========================================================

IVRs belong to their ``department``; a queue to a department when every agent
is of it. Their department's admin and owners change them (a manager reads
them): where callers of the department's numbers are sent is that department's
decision, and an IVR's keys may reach any destination only an owner may
grant. A department admin's IVR or queue sends calls inside the department
only (its users, ring groups, IVRs and queues), in what they write.

A department's numbers are the ones it presents (``caller_id``) or that route
to one of its users, their voicemail or one of its ring groups; a ring group is
a department's when every member is. Rules are functions of the principal and
the stored directory (a dict in the file's form), so they are tested without
HTTP. Each refusal names the field it is about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provisioning.api.auth import Principal
from provisioning.api.errors import ApiError, FieldError
from provisioning.model import ROLES, NumberIndex, Role, parse_destination
from provisioning.model import Number as NumberModel

__all__ = [
    "RANK",
    "SELF_FIELDS",
    "check_write",
    "dept_extensions",
    "may_audit",
    "may_manage_user",
    "may_set_status",
    "visible",
]

RANK: Mapping[str, int] = {role: i for i, role in enumerate(ROLES)}
#: What users change on their own record (dotted prefixes of the user table).
SELF_FIELDS: tuple[str, ...] = ("forwarding", "schedule", "voicemail_pin", "voicemail.greeting")
#: What a department admin changes on a department's number: its routing.
NUMBER_ROUTING_FIELDS: tuple[str, ...] = ("route_to", "hold_music", "name")
DEPARTMENT_ADMIN_DEPT_FIELDS: tuple[str, ...] = ("office_hours", "break_hours", "holidays")

Row = Mapping[str, Any]
Data = Mapping[str, Any]


def at_least(p: Principal, role: Role) -> bool:
    return RANK[p.role] >= RANK[role]


def dept_extensions(data: Data, department: str) -> set[str]:
    return {str(u.get("extension")) for u in data.get("users", [])
            if u.get("department") == department}


def _group_in_dept(group: Row, members_of_dept: set[str]) -> bool:
    members = group.get("members") or []
    return bool(members) and all(str(m) in members_of_dept for m in members)


def _dept_groups(data: Data, department: str) -> set[str]:
    exts = dept_extensions(data, department)
    return {str(g.get("name")) for g in data.get("ring_groups", []) if _group_in_dept(g, exts)}


def _destination_in_dept(value: object, data: Data, department: str) -> bool:
    """Whether a destination stays inside the department (or just hangs up)."""
    try:
        dest = parse_destination(value)
    except ValueError:
        return True  # not a destination at all: the validator names the error
    if dest.kind == "busy":
        return True
    if dest.kind in ("extension", "voicemail") and dest.target:
        return dest.target in dept_extensions(data, department)
    if dest.kind == "ring_group":
        return dest.target in _dept_groups(data, department)
    if dest.kind == "ivr":
        return dest.target in _dept_ivrs(data, department)
    if dest.kind == "queue":
        return dest.target in _dept_queues(data, department)
    return False


def _dept_ivrs(data: Data, department: str) -> set[str]:
    return {str(i.get("name")) for i in data.get("ivrs", []) if i.get("department") == department}


def _queue_in_dept(queue: Row, members_of_dept: set[str]) -> bool:
    agents = queue.get("agents") or []
    return bool(agents) and all(str(a) in members_of_dept for a in agents)


def _dept_queues(data: Data, department: str) -> set[str]:
    exts = dept_extensions(data, department)
    return {str(q.get("name")) for q in data.get("queues", []) if _queue_in_dept(q, exts)}


def _row_destinations(table: str, row: Row) -> list[tuple[str, object]]:
    """(field, destination) of every destination an IVR or queue row names."""
    out: list[tuple[str, object]] = []
    if table == "ivrs":
        keys = row.get("keys")
        if isinstance(keys, Mapping):
            out += [(f"keys.{k}", v) for k, v in keys.items()]
        out += [(k, row[k]) for k in ("on_timeout", "on_invalid", "outside_office_hours")
                if k in row]
    else:
        out += [(k, row[k]) for k in ("on_timeout", "when_no_agents")
                if k in row and row[k] != "join"]
    return out


def _number_in_dept(number: Row, data: Data, department: str) -> bool:
    caller_ids = {d.get("caller_id") for d in data.get("departments", [])
                  if d.get("name") == department}
    if number.get("number") in caller_ids:
        return True
    return _destination_in_dept(number.get("route_to"), data, department) and \
        parse_destination_kind(number.get("route_to")) != "busy"


def parse_destination_kind(value: object) -> str:
    try:
        return parse_destination(value).kind
    except ValueError:
        return ""


def visible(p: Principal, table: str, row: Row, data: Data) -> bool:
    """Whether ``p`` may read this row of ``table``."""
    if table == "trunks":
        return p.role == "owner"
    if table == "system":
        return at_least(p, "manager")
    if at_least(p, "manager"):
        return True
    if table == "users":
        if row.get("extension") == p.extension:
            return True
        return at_least(p, "receptionist") and bool(p.department) and \
            row.get("department") == p.department
    if table == "departments":
        return row.get("name") == p.department
    if table == "ring_groups":
        if p.extension and p.extension in (row.get("members") or []):
            return True
        return at_least(p, "receptionist") and \
            _group_in_dept(row, dept_extensions(data, p.department))
    if table == "numbers":
        return p.role == "department_admin" and _number_in_dept(row, data, p.department)
    if table == "ivrs":
        return at_least(p, "receptionist") and bool(p.department) and \
            row.get("department") == p.department
    if table == "queues":
        if p.extension and p.extension in (row.get("agents") or []):
            return True
        return at_least(p, "receptionist") and \
            _queue_in_dept(row, dept_extensions(data, p.department))
    return False


def may_read_table(p: Principal, table: str) -> bool:
    if table == "trunks":
        return p.role == "owner"
    if table == "system":
        return at_least(p, "manager")
    return True


def may_audit(p: Principal) -> bool:
    return at_least(p, "manager")


def may_manage_user(p: Principal, user: Row) -> bool:
    """Administer another user (reset their web password, say): above them in their
    department, or a manager (never an owner's record), or an owner."""
    role = str(user.get("role", "user"))
    if p.role == "owner":
        return True
    if role == "owner":
        return False
    if p.role == "manager":
        return True
    return p.role == "department_admin" and user.get("department") == p.department and \
        RANK.get(role, 0) <= RANK["department_admin"] and role != "department_admin"


def may_set_status(p: Principal, user: Row) -> bool:
    if user.get("extension") == p.extension or at_least(p, "manager"):
        return True
    return at_least(p, "receptionist") and user.get("department") == p.department


def _forbidden(fields: Sequence[str], prefix: str, why: str) -> list[FieldError]:
    return [(f"{prefix}.{f}" if f else prefix, why) for f in fields]


def _outside(fields: Sequence[str], allowed: Sequence[str]) -> list[str]:
    return [f for f in fields if not any(f == a or f.startswith(a + ".") for a in allowed)]


def check_write(p: Principal, table: str, old: Row | None, new: Row | None, changed: Sequence[str],
                data: Data, where: str) -> None:
    """Raise 403 naming each field ``p`` may not write.

    ``old``/``new``: the row before and after (``None``: created / deleted);
    ``changed``: the dotted keys that differ; ``where``: the row's path
    (``users[3]``) for the messages.
    """
    errors: list[FieldError] = []
    if table in ("trunks", "system"):
        if p.role != "owner":
            errors.append((where, f"only an owner changes {table}"))
    elif table == "users":
        errors = _user_write(p, old, new, changed, data, where)
    elif table == "numbers":
        errors = _number_write(p, old, new, changed, data, where)
    elif table == "ring_groups":
        errors = _group_write(p, old, new, data, where)
    elif table == "departments":
        errors = _department_write(p, old, new, changed, where)
    elif table in ("ivrs", "queues"):
        errors = _menu_write(p, table, old, new, changed, data, where)
    if errors:
        raise ApiError(403, errors)


def _user_write(p: Principal, old: Row | None, new: Row | None, changed: Sequence[str],
                data: Data, where: str) -> list[FieldError]:
    rows = [r for r in (old, new) if r is not None]
    if p.role == "owner":
        return []
    if any(r.get("role") == "owner" for r in rows):
        return [(f"{where}.role", "only an owner creates, changes or deletes an owner")]
    if p.role == "manager":
        return []
    own = old is not None and new is not None and old.get("extension") == p.extension
    if p.role == "department_admin":
        errors: list[FieldError] = []
        for r in rows:
            if r.get("department") != p.department:
                errors.append((f"{where}.department", f"a department admin manages the users "
                                                      f"of '{p.department}' only"))
                break
            if RANK.get(str(r.get("role", "user")), 0) > RANK["department_admin"]:
                errors.append((f"{where}.role", "a department admin gives at most the "
                                                "department_admin role"))
                break
        if own and "role" in changed:
            errors.append((f"{where}.role", "you cannot change your own role"))
        if old is not None and not own and old.get("role") == "department_admin":
            errors.append((where, "a department admin does not change another department "
                                  "admin"))
        return errors
    if not own:
        return [(where, "you may change your own settings only")]
    return _forbidden(_outside(changed, SELF_FIELDS), where,
                      f"a {p.role} does not change this (own settings: "
                      f"{', '.join(SELF_FIELDS)})")


def _number_write(p: Principal, old: Row | None, new: Row | None, changed: Sequence[str],
                  data: Data, where: str) -> list[FieldError]:
    if at_least(p, "manager"):
        return []
    if p.role != "department_admin" or old is None or new is None:
        return [(where, "only a manager or an owner adds or removes numbers")
                if p.role == "department_admin" else (where, f"a {p.role} does not change numbers")]
    if not _number_in_dept(old, data, p.department):
        return [(where, f"this number is not one of '{p.department}'")]
    errors = _forbidden(_outside(changed, NUMBER_ROUTING_FIELDS), where,
                        "a department admin changes a number's routing only "
                        f"({', '.join(NUMBER_ROUTING_FIELDS)})")
    if "route_to" in changed and not _destination_in_dept(new.get("route_to"), data,
                                                          p.department):
        errors.append((f"{where}.route_to", f"a department admin routes to the users and ring "
                                            f"groups of '{p.department}' only"))
    return errors


def _group_write(p: Principal, old: Row | None, new: Row | None, data: Data,
                 where: str) -> list[FieldError]:
    if at_least(p, "manager"):
        return []
    if p.role != "department_admin":
        return [(where, f"a {p.role} does not change ring groups")]
    exts = dept_extensions(data, p.department)
    errors: list[FieldError] = []
    for r in (old, new):
        if r is not None and not _group_in_dept(r, exts):
            errors.append((f"{where}.members", f"a department admin's ring groups have "
                                               f"members of '{p.department}' only"))
            break
    if new is not None and "no_answer" in new and \
            not _destination_in_dept(new["no_answer"], data, p.department):
        errors.append((f"{where}.no_answer", f"a department admin routes to the users and ring "
                                             f"groups of '{p.department}' only"))
    return errors


def _menu_write(p: Principal, table: str, old: Row | None, new: Row | None,
                changed: Sequence[str], data: Data, where: str) -> list[FieldError]:
    """IVRs and queues: an owner, or the admin of their department (see the module
    notes); what a department admin writes sends calls inside the department."""
    if p.role == "owner":
        return []
    what = "IVRs" if table == "ivrs" else "queues"
    if p.role != "department_admin":
        return [(where, f"a {p.role} does not change {what} (their department's admin or "
                        "an owner does)")]
    exts = dept_extensions(data, p.department)
    for r in (old, new):
        if r is None:
            continue
        mine = r.get("department") == p.department if table == "ivrs" else \
            _queue_in_dept(r, exts)
        if not mine:
            field = "department" if table == "ivrs" else "agents"
            return [(f"{where}.{field}", f"a department admin's {what} are "
                                         f"'{p.department}''s only")]
    errors: list[FieldError] = []
    if new is not None:
        itself = f"ivr:{new.get('name')}" if table == "ivrs" else ""
        for field, dest in _row_destinations(table, new):
            touched = old is None or any(c == field or c.startswith(field + ".")
                                         or field.startswith(c + ".") for c in changed)
            if touched and dest != itself and \
                    not _destination_in_dept(dest, data, p.department):
                errors.append((f"{where}.{field}", f"a department admin routes to the users, "
                                                   f"ring groups, IVRs and queues of "
                                                   f"'{p.department}' only"))
    return errors


def _department_write(p: Principal, old: Row | None, new: Row | None, changed: Sequence[str],
                      where: str) -> list[FieldError]:
    if at_least(p, "manager"):
        return []
    if p.role == "department_admin" and old is not None and new is not None and \
            old.get("name") == p.department:
        return _forbidden(_outside(changed, DEPARTMENT_ADMIN_DEPT_FIELDS), where,
                          "a department admin changes the department's hours and holidays "
                          "only")
    return [(where, f"a {p.role} does not change departments")]


def number_row_index(data: Data, key: str) -> int | None:
    """The position of a number in ``data`` by any form of it (the routing lookup)."""
    rows = data.get("numbers", [])
    index = NumberIndex(NumberModel(number=str(r.get("number", "")),
                                    route_to=parse_destination("busy")) for r in rows)
    found = index.find(key)
    if found is None:
        return None
    return next(i for i, r in enumerate(rows) if r.get("number") == found.number)
