"""``switchboard provision export``: the live directory as a directory file.

The store's rows are already the file's form (:func:`provisioning.directory.directory_to_dict`,
every value explicit), so the export is those rows written as TOML. Applying
the export changes nothing: it *is* the stored directory. Live statuses are
not part of it (they are live state, like registrations), and neither are
web passwords, second factors or API keys (they are accounts, not
configuration: never exported, not even with secrets).

Secrets: SIP passwords, trunk passwords and voicemail PINs are left out unless
``with_secrets`` (``--with-secrets``). Applying a file that leaves a secret
out keeps the stored one (:func:`provisioning.directory.keep_secrets`), so the
export without secrets still applies as no change; a new user in it needs its
password written in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomli_w

from provisioning.directory import KEPT_SECRETS, TABLES

__all__ = ["directory_toml", "without_secrets"]


def without_secrets(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for table, keys in KEPT_SECRETS.items():
        out[table] = [{k: v for k, v in row.items() if k not in keys}
                      for row in data.get(table, [])]
    return out


def directory_toml(data: Mapping[str, Any], revision: int = 0, *,
                   with_secrets: bool = False) -> str:
    if not with_secrets:
        data = without_secrets(data)
    ordered = {table: data[table] for table in TABLES if data.get(table)}
    what = ("Contains secrets (SIP and trunk passwords, voicemail PINs): keep it private."
            if with_secrets else
            "No secrets: applying it keeps the SIP and trunk passwords and PINs in the store.")
    head = (f"# Exported from the Switchboard store (directory revision {revision}).\n"
            "# `switchboard provision apply` of this file changes nothing; applying it later\n"
            f"# replaces what was changed since (by the admin API too). {what}\n\n")
    return head + tomli_w.dumps(ordered)
