"""JSON Schema of the directory's tables, and the OpenAPI 3.1 document.

Derived, not written twice: the keys of each table are the validator's own
declarations (``USER_KEYS``, ``STATUS_KEYS``... of :mod:`provisioning.directory`;
:func:`check_declarations` fails when a key has no field here or a field here is
not a key there), the enums are the model's constants (``STATUSES``,
``RECORD_CALLS``, ``DESTINATION_KINDS``...), the patterns the validator's
regular expressions, the bounds its bounds. The schema is never stricter than
the validator: what the schema refuses, the validator refuses too (the
schemathesis run checks it); cross-table rules (a department that exists, an
extension of the right length) are the validator's alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from provisioning import directory as d
from provisioning.model import (
    CODECS,
    DESTINATION_KINDS,
    DIGITS_RE,
    FEATURE_CODE_RE,
    IVR_KEYS,
    LANGUAGES,
    NAME_RE,
    NUMBER_TYPES,
    PHONE_RE,
    PRIORITY_RE,
    QUEUE_STRATEGIES,
    READ_DATETIMES,
    RECORD_CALLS,
    ROLES,
    SRTP_MODES,
    STATUSES,
    STRATEGIES,
    TARGETED_KINDS,
    TRANSPORTS,
    VOICEMAIL_EMAILS,
    WEEKDAYS,
)

__all__ = ["TABLE_SCHEMAS", "check_declarations", "components", "input_schema",
           "output_schema"]

Schema = dict[str, Any]


def _full(pattern: re.Pattern[str] | str, optional: bool = False) -> str:
    text = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    return f"^(?:{text})$" if not optional else f"^(?:(?:{text})|)$"


def string(pattern: re.Pattern[str] | str | None = None, *, optional: bool = False,
           nonempty: bool = False) -> Schema:
    out: Schema = {"type": "string"}
    if pattern is not None:
        out["pattern"] = _full(pattern, optional)
    elif nonempty:
        out["minLength"] = 1
    return out


def enum(values: Sequence[str]) -> Schema:
    return {"type": "string", "enum": list(values)}


def integer(lo: int | None = None, hi: int | None = None) -> Schema:
    out: Schema = {"type": "integer"}
    if lo is not None:
        out["minimum"] = lo
    if hi is not None:
        out["maximum"] = hi
    return out


BOOLEAN: Schema = {"type": "boolean"}


def strings(item: Schema | None = None, *, unique: bool = True, min_items: int = 0) -> Schema:
    out: Schema = {"type": "array", "items": item or {"type": "string", "minLength": 1}}
    if unique:
        out["uniqueItems"] = True
    if min_items:
        out["minItems"] = min_items
    return out


def obj(properties: Mapping[str, Schema], required: Sequence[str] = ()) -> Schema:
    out: Schema = {"type": "object", "properties": dict(properties),
                   "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


_TARGETS = {"extension": DIGITS_RE.pattern, "external": PHONE_RE.pattern,
            "ring_group": NAME_RE.pattern, "queue": NAME_RE.pattern, "ivr": NAME_RE.pattern}
assert set(_TARGETS) == TARGETED_KINDS  # every kind:target form has its target's pattern
DESTINATION_RE = "|".join(
    f"{kind}:(?:{_TARGETS[kind]})" if kind in TARGETED_KINDS
    else f"voicemail(?::(?:{DIGITS_RE.pattern}))?" if kind == "voicemail" else kind
    for kind in DESTINATION_KINDS)
DESTINATION: Schema = {"oneOf": [
    string(DESTINATION_RE),
    obj({"to": string(DESTINATION_RE), "rebound": BOOLEAN, "deflect_302": BOOLEAN}, ["to"]),
], "description": "voicemail | voicemail:EXT | extension:EXT | mobile | external:NUMBER | "
                  "ring_group:NAME | queue:NAME | ivr:NAME | busy | same_as_external; a table "
                  "adds rebound or deflect_302 to mobile and external destinations"}
HOURS: Schema = obj({day: strings(string(d.HOURS_RE)) for day in WEEKDAYS})
GREETING: Schema = string(r"default|[\s\S]*\.[wW][aA][vV]")
PHONE_OPT = string(PHONE_RE, optional=True)

_RULES = obj({
    "no_answer_seconds": integer(0, 600),
    "no_answer": obj({"external": DESTINATION, "internal": DESTINATION}),
    "busy": obj({"external": DESTINATION, "internal": DESTINATION}),
    "ring_mobile_simultaneously": BOOLEAN,
    "accept_ring_group_calls": BOOLEAN,
    "log_out_of_queues": BOOLEAN,
    "voicemail_outside_office_hours": BOOLEAN,
    "greeting": GREETING,
})
_HOURS_OR_DEPARTMENT: Schema = {"oneOf": [{"const": "department"}, HOURS]}

#: Each table's fields, keyed as the validator's declarations.
TABLE_SCHEMAS: Mapping[str, Mapping[str, Schema]] = {
    "system": {
        "domain": string(nonempty=True),
        "extension_digits": integer(2, 6),
        "emergency_numbers": strings(string(DIGITS_RE)),
        "min_register_expires": integer(1),
        "max_register_expires": integer(1),
        "hold_music": strings(unique=False),
        "voicemail_number": string(DIGITS_RE),
        "rtp_ports": string(d.PORTS_RE),
        "smtp": obj({"host": string(nonempty=True), "port": integer(1, 65535),
                     "sender": {"type": "string"}}, ["host"]),
        "admin_url": string(d.ADMIN_URL_RE, optional=True),
        "require_2fa": BOOLEAN,
        "feature_codes": obj({key: string(FEATURE_CODE_RE) for key in d.FEATURE_CODE_KEYS},
                             []),
        "park": obj({"orbits": string(d.ORBITS_RE), "ring_back_seconds": integer(10, 3600),
                     "ring_back_to": DESTINATION}, []),
    },
    "trunks": {
        "name": string(NAME_RE), "host": string(nonempty=True), "port": integer(1, 65535),
        "transport": enum(TRANSPORTS), "channels": integer(1),
        "inbound_from": strings(), "inbound_port": integer(1, 65535),
        "supports_302": BOOLEAN, "register": BOOLEAN,
        "username": {"type": "string"}, "password": {"type": "string", "writeOnly": True},
    },
    "departments": {
        "name": string(nonempty=True), "caller_id": string(PHONE_RE),
        "timezone": string(nonempty=True), "language": enum(LANGUAGES),
        "holidays": strings(string(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")),
        "office_hours": HOURS, "break_hours": HOURS,
    },
    "numbers": {
        "number": string(PHONE_RE), "name": {"type": "string"}, "type": enum(NUMBER_TYPES),
        "route_to": DESTINATION, "block_caller_id": BOOLEAN,
        "hold_music": strings(unique=False), "record_inbound": BOOLEAN,
        "record_outbound": BOOLEAN, "caller_id_name": {"type": "string", "maxLength": 64},
        "outbound_callers": strings(string(DIGITS_RE)),
        "billing_group": {"type": "string", "maxLength": 64},
    },
    "ring_groups": {
        "name": string(NAME_RE), "extension": string(DIGITS_RE), "strategy": enum(STRATEGIES),
        "members": strings(string(DIGITS_RE), min_items=1), "ring_seconds": integer(1, 600),
        "no_answer": DESTINATION,
    },
    "ivrs": {
        "name": string(NAME_RE), "extension": string(DIGITS_RE),
        "prompt": string(r"[\s\S]*\.[wW][aA][vV]", optional=True),
        "text": {"type": "string", "maxLength": d.IVR_TEXT_MAX},
        "language": enum(LANGUAGES),
        "keys": obj({key: DESTINATION for key in IVR_KEYS}),
        "dial_by_extension": BOOLEAN, "timeout_seconds": integer(1, 60),
        "repeat": integer(0, 10), "on_timeout": DESTINATION, "on_invalid": DESTINATION,
        "outside_office_hours": DESTINATION, "department": {"type": "string"},
    },
    "queues": {
        "name": string(NAME_RE), "extension": string(DIGITS_RE),
        "strategy": enum(QUEUE_STRATEGIES), "agents": strings(string(DIGITS_RE), min_items=1),
        "agents_start_logged_in": BOOLEAN, "ring_seconds": integer(1, 600),
        "wrap_up_seconds": integer(0, 600), "max_wait_seconds": integer(1, 86400),
        "max_callers": integer(1, 10000), "on_timeout": DESTINATION,
        "when_no_agents": {"oneOf": [{"const": "join"}, DESTINATION]},
        "hold_music": strings(unique=False), "announce_position_every": integer(0, 3600),
        "service_level_seconds": integer(1, 3600), "language": enum(LANGUAGES),
        "priority_callers": strings(string(PRIORITY_RE)),
    },
    "users": {
        "extension": string(DIGITS_RE), "name": string(nonempty=True),
        "password": {"type": "string", "writeOnly": True},
        "voicemail_pin": {**string(d.PIN_RE, optional=True), "writeOnly": True},
        "email": {"type": "string"}, "mobile": PHONE_OPT, "department": string(nonempty=True),
        "role": enum(ROLES), "outbound_caller_id": PHONE_OPT, "status": enum(STATUSES),
        "accept_multiple_calls": BOOLEAN, "disabled": BOOLEAN, "external_calls": BOOLEAN,
        "outbound_pin_required": BOOLEAN,
        "codecs": strings(enum(CODECS), min_items=1),
        "record_calls": enum(RECORD_CALLS), "confirm_external_answer": BOOLEAN,
        "srtp": enum(SRTP_MODES),
        "voicemail": obj({
            "enabled": BOOLEAN, "language": enum(LANGUAGES), "pin_required": BOOLEAN,
            "read_datetime": enum(READ_DATETIMES), "announce_caller": BOOLEAN,
            "email": enum(VOICEMAIL_EMAILS), "max_seconds": integer(1, 3600),
            "greeting": GREETING,
        }),
        "schedule": obj({"office_hours": _HOURS_OR_DEPARTMENT,
                         "break_hours": _HOURS_OR_DEPARTMENT,
                         "auto_status": BOOLEAN, "block_outbound_outside_hours": BOOLEAN}),
        "forwarding": obj({status: _RULES for status in STATUSES}),
    },
}
#: The validator's declarations each table and sub-table is held to.
_DECLARED: Mapping[str, tuple[Schema, Sequence[str]]] = {
    "system": (obj(TABLE_SCHEMAS["system"]), d.SYSTEM_KEYS),
    "trunks": (obj(TABLE_SCHEMAS["trunks"]), d.TRUNK_KEYS),
    "departments": (obj(TABLE_SCHEMAS["departments"]), d.DEPARTMENT_KEYS),
    "numbers": (obj(TABLE_SCHEMAS["numbers"]), d.NUMBER_KEYS),
    "ring_groups": (obj(TABLE_SCHEMAS["ring_groups"]), d.RING_GROUP_KEYS),
    "users": (obj(TABLE_SCHEMAS["users"]), d.USER_KEYS),
    "ivrs": (obj(TABLE_SCHEMAS["ivrs"]), d.IVR_TABLE_KEYS),
    "ivrs.keys": (TABLE_SCHEMAS["ivrs"]["keys"], IVR_KEYS),
    "queues": (obj(TABLE_SCHEMAS["queues"]), d.QUEUE_KEYS),
    "users.voicemail": (TABLE_SCHEMAS["users"]["voicemail"], d.VOICEMAIL_KEYS),
    "users.schedule": (TABLE_SCHEMAS["users"]["schedule"], d.SCHEDULE_KEYS),
    "users.forwarding.<status>": (_RULES, d.STATUS_KEYS),
    "users.forwarding": (TABLE_SCHEMAS["users"]["forwarding"], STATUSES),
    "departments.office_hours": (HOURS, WEEKDAYS),
}
#: Keys a new row must have (the validator says "missing (required)" otherwise).
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "trunks": ("name", "host"), "departments": ("name", "caller_id"),
    "numbers": ("number", "route_to"), "ring_groups": ("name", "extension", "members"),
    "users": ("extension", "name", "department"), "system": ("domain",),
    "ivrs": ("name", "extension"), "queues": ("name", "extension", "agents"),
}
SECRET_KEYS: Mapping[str, tuple[str, ...]] = {
    "users": ("password", "voicemail_pin"), "trunks": ("password",),
}


def check_declarations() -> list[str]:
    """Where the schema and the validator's declarations differ (empty: they agree)."""
    problems = []
    for where, (schema, keys) in _DECLARED.items():
        mine = set(schema["properties"])
        if mine != set(keys):
            problems.append(f"{where}: schema {sorted(mine - set(keys))} not declared, "
                            f"declared {sorted(set(keys) - mine)} without schema")
    return problems


def output_schema(table: str) -> Schema:
    """A row as the API returns it: secrets replaced by ``<key>_set`` flags."""
    props = {k: v for k, v in TABLE_SCHEMAS[table].items()
             if k not in SECRET_KEYS.get(table, ())}
    for key in SECRET_KEYS.get(table, ()):
        props[f"{key}_set"] = {"type": "boolean", "readOnly": True,
                               "description": f"whether a {key} is set (it is never returned)"}
    out = obj(props)
    out["additionalProperties"] = True  # keys added to the contract later do not break clients
    return out


def input_schema(table: str, patch: bool = False) -> Schema:
    """A new row (``patch=False``) or an RFC 7396 merge patch of one (``null`` removes a
    key: its default applies)."""
    props = dict(TABLE_SCHEMAS[table])
    if not patch:
        return obj(props, REQUIRED[table])
    nullable: dict[str, Schema] = {k: {"anyOf": [_patchable(v), {"type": "null"}]}
                                  for k, v in props.items()}
    for key in SECRET_KEYS.get(table, ()):
        nullable[f"{key}_set"] = {"type": "boolean", "description": "ignored (read-only)"}
    return obj(nullable)


def _patchable(schema: Schema) -> Schema:
    """Nested tables of a patch are patches too (their keys optional, ``null`` allowed)."""
    if schema.get("type") == "object" and "properties" in schema and "required" not in schema:
        props: dict[str, Schema] = {
            k: {"anyOf": [_patchable(v), {"type": "null"}]}
            for k, v in schema["properties"].items()}
        return obj(props)
    return schema


#: The name of a table's row in the OpenAPI document's ``components/schemas``.
ROW_NAMES: Mapping[str, str] = {
    "system": "System", "trunks": "Trunk", "departments": "Department", "numbers": "Number",
    "ring_groups": "RingGroup", "users": "User", "ivrs": "Ivr", "queues": "Queue",
}


def components() -> dict[str, Schema]:
    """The schemas the OpenAPI document shares by name (``$ref``) instead of repeating:
    each table's row as returned, as created and as a merge patch, and the parts used
    in many places (a destination, a forwarding rule, weekly hours). These are the very
    schemas the routes are built from, so the document puts a ``$ref`` wherever one of
    them appears; nothing is declared twice."""
    named: dict[str, Schema] = {
        "Destination": DESTINATION,
        "ForwardingRule": _RULES,
        "ForwardingRulePatch": _patchable(_RULES),
        "WeeklyHours": HOURS,
        "WeeklyHoursPatch": _patchable(HOURS),
        "HoursOrDepartment": _HOURS_OR_DEPARTMENT,
        "Greeting": GREETING,
    }
    for table, name in ROW_NAMES.items():
        named[name] = output_schema(table)
        if table != "system":
            named[f"New{name}"] = input_schema(table)
        named[f"{name}Patch"] = input_schema(table, patch=True)
    return named
