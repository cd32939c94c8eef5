"""``switchboard provision export``: the live directory as a directory file.

The store's rows are already the file's form (:func:`provisioning.directory.directory_to_dict`,
every value explicit), so the export is those rows written as TOML. Applying
the export changes nothing: it *is* the stored directory. Live statuses are
not part of it (they are live state, like registrations), and neither are
web passwords, second factors or API keys (they are accounts, not
configuration). SIP passwords and voicemail PINs are: the file is a complete
system, so keep it as private as the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomli_w

from provisioning.directory import TABLES

__all__ = ["directory_toml"]


def directory_toml(data: Mapping[str, Any], revision: int = 0) -> str:
    ordered = {table: data[table] for table in TABLES if data.get(table)}
    head = (f"# Exported from the Switchboard store (directory revision {revision}).\n"
            "# `switchboard provision apply` of this file changes nothing; applying it later\n"
            "# replaces what was changed since (by the admin API too). Contains secrets.\n\n")
    return head + tomli_w.dumps(ordered)
