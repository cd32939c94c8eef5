"""The admin API's write path without HTTP, on both stores: one model, one validation
(the whole directory through parse_directory), revisions, roles per field, secrets
never returned, the audit entry, and the export that applies as a no-op."""

# ruff: noqa: F811  (the store fixtures, imported, are parameters here)
from __future__ import annotations

import json
import secrets
import tomllib
from typing import Any

import pyotp
import pytest
from openapi_spec_validator import validate as validate_openapi

from provisioning.api import schema
from provisioning.api.auth import (
    AttemptLimiter,
    Authenticator,
    Principal,
    check_second_factor,
    enrol_totp,
    hash_password,
)
from provisioning.api.errors import ApiError
from provisioning.api.http import PREFIX, openapi
from provisioning.api.resources import DirectoryApi, merge_patch, parse_if_match
from provisioning.directory import keep_secrets, parse_directory
from provisioning.export import directory_toml
from provisioning.model import Directory
from provisioning.secretbox import SecretBox, SecretBoxError
from provisioning.store import Store
from tests.test_provisioning_store import (  # noqa: F401  (fixtures)
    backend,
    directory,
    store,
)

OWNER = Principal(actor="user:900", role="owner", extension="900", department="Sales")
ALICE = Principal(actor="user:101", role="department_admin", extension="101",
                  department="Sales")
BRUNO = Principal(actor="user:102", role="user", extension="102", department="Sales")
DAVID = Principal(actor="user:201", role="manager", extension="201", department="Support")


@pytest.fixture
async def api(store: Store, directory: Directory) -> DirectoryApi:
    await store.apply_directory(directory)
    return DirectoryApi(store)


def _errors(exc: pytest.ExceptionInfo[ApiError]) -> list[tuple[str, str]]:
    return exc.value.errors


async def test_a_write_is_validated_whole_and_named_by_field(api: DirectoryApi,
                                                             store: Store) -> None:
    patch = {"forwarding": {"away": {"no_answer": {"external": "extension:109"}}},
             "codecs": ["G722", "speex"]}
    with pytest.raises(ApiError) as caught:
        await api.update(OWNER, "users", "102", patch, 1, "test")
    assert caught.value.status == 422
    assert set(_errors(caught)) == {
        ("users[1].forwarding.away.no_answer.external", "unknown extension '109'"),
        ("users[1].codecs[1]", "unknown codec 'speex' (supported: G722, PCMU, PCMA, G729, opus)"),
    }
    assert await store.directory_revision() == 1  # nothing applied


async def test_deleting_a_referenced_user_is_refused_naming_the_reference(
        api: DirectoryApi) -> None:
    with pytest.raises(ApiError) as caught:
        await api.delete(OWNER, "users", "103", 1, "test")
    assert caught.value.status == 422
    assert ("ring_groups[0].members[2]", "unknown extension '103'") in _errors(caught)


async def test_a_forward_set_by_patch_is_stored_with_a_new_revision(
        api: DirectoryApi, store: Store) -> None:
    row, revision = await api.update(
        BRUNO, "users", "102",
        {"forwarding": {"away": {"no_answer": {"external": "external:+15145550199"}}}},
        1, "127.0.0.1")
    assert revision == 2
    assert row["forwarding"]["away"]["no_answer"]["external"] == "external:+15145550199"
    loaded = await store.load_directory()
    assert loaded is not None
    rules = loaded.user("102").forwarding.away  # type: ignore[union-attr]
    assert str(rules.no_answer.external) == "external:+15145550199"
    [entry] = await store.list_audit()
    assert entry.actor == "user:102" and entry.target == "users/102"
    assert entry.after == {"forwarding.away.no_answer.external": "external:+15145550199"}
    assert entry.before == {"forwarding.away.no_answer.external": "voicemail"}


async def test_revisions_guard_every_write(api: DirectoryApi) -> None:
    with pytest.raises(ApiError) as caught:
        parse_if_match(None)
    assert caught.value.status == 428
    assert parse_if_match('"7"') == 7 and parse_if_match('W/"7"') == 7
    assert parse_if_match("*") is None
    with pytest.raises(ApiError) as caught:
        await api.update(OWNER, "users", "102", {"name": "B"}, 5, "test")
    assert caught.value.status == 412
    _, revision = await api.update(OWNER, "users", "102", {"name": "B"}, None, "test")
    assert revision == 2


async def test_secrets_are_write_only(api: DirectoryApi, store: Store) -> None:
    row, _ = await api.get(OWNER, "users", "101")
    assert "password" not in row and "voicemail_pin" not in row
    assert row["password_set"] is True and row["voicemail_pin_set"] is True
    row, _ = await api.update(OWNER, "users", "101",
                              {"password": "new-sip-secret", "password_set": True}, 1, "t")
    assert "password" not in row
    loaded = await store.load_directory()
    assert loaded is not None and loaded.user("101").password == "new-sip-secret"  # type: ignore[union-attr]
    [entry] = await store.list_audit()
    assert entry.before == {"password": "********"} and entry.after == {"password": "********"}
    trunks, _ = await api.list(OWNER, "trunks")
    assert all("password" not in t and "password_set" in t for t in trunks)


async def test_users_change_their_own_settings_only(api: DirectoryApi) -> None:
    with pytest.raises(ApiError) as caught:
        await api.update(BRUNO, "users", "102", {"role": "manager", "name": "X"}, 1, "t")
    assert caught.value.status == 403
    assert {p for p, _ in _errors(caught)} == {"users[1].role", "users[1].name"}
    with pytest.raises(ApiError) as caught:
        await api.update(BRUNO, "users", "101", {"forwarding": {}}, 1, "t")
    assert caught.value.status == 404  # what one may not see is not there
    rows, _ = await api.list(BRUNO, "users")
    assert [r["extension"] for r in rows] == ["102"]


async def test_department_admin_manages_their_department(api: DirectoryApi) -> None:
    rows, _ = await api.list(ALICE, "users")
    assert [r["extension"] for r in rows] == ["101", "102", "103"]
    _, revision = await api.update(ALICE, "users", "103", {"accept_multiple_calls": True}, 1,
                                   "t")
    with pytest.raises(ApiError) as caught:
        await api.update(ALICE, "users", "103", {"role": "manager"}, revision, "t")
    assert _errors(caught)[0][0] == "users[2].role"
    with pytest.raises(ApiError) as caught:
        await api.create(ALICE, "users", {"extension": "104", "name": "N",
                                          "department": "Support", "password": "p"},
                         revision, "t")
    assert caught.value.status == 403 and _errors(caught)[0][0] == "users[6].department"
    numbers, _ = await api.list(ALICE, "numbers")
    assert [n["number"] for n in numbers] == ["+15145550100", "+18005550100"]
    with pytest.raises(ApiError) as caught:
        await api.update(ALICE, "numbers", "+15145550100", {"route_to": "extension:201"},
                         revision, "t")
    assert _errors(caught)[0][0] == "numbers[0].route_to"
    _, revision = await api.update(ALICE, "numbers", "5145550100",  # any form finds it
                                   {"route_to": "extension:102"}, revision, "t")
    assert revision == 3


async def test_manager_changes_users_but_never_trunks_or_owners(api: DirectoryApi) -> None:
    _, revision = await api.update(DAVID, "users", "101", {"name": "Alice M."}, 1, "t")
    for table, key in (("trunks", "carrier"), ("system", "system")):
        with pytest.raises(ApiError) as caught:
            await api.update(DAVID, table, key, {"port": 5091} if table == "trunks" else
                             {"voicemail_number": "998"}, revision, "t")
        assert caught.value.status in (403, 404)
    with pytest.raises(ApiError) as caught:
        await api.update(DAVID, "users", "102", {"role": "owner"}, revision, "t")
    assert caught.value.status == 403


async def test_a_greeting_set_through_the_api_is_a_file_name(api: DirectoryApi) -> None:
    with pytest.raises(ApiError) as caught:
        await api.update(BRUNO, "users", "102",
                         {"forwarding": {"away": {"greeting": "/etc/other/greeting.wav"}}}, 1, "t")
    assert _errors(caught)[0][0] == "users[1].forwarding.away.greeting"
    row, _ = await api.update(BRUNO, "users", "102",
                              {"forwarding": {"away": {"greeting": "away-fr.wav"}}}, 1, "t")
    assert row["forwarding"]["away"]["greeting"] == "away-fr.wav"


async def test_the_export_applies_as_no_change(api: DirectoryApi, store: Store) -> None:
    await api.update(OWNER, "users", "102", {"mobile": "+15145550123"}, 1, "t")
    data, revision = await store.load_directory_data()
    assert data is not None
    for with_secrets in (True, False):
        text = directory_toml(data, revision, with_secrets=with_secrets)
        assert ("bruno-secret-102" in text) == with_secrets
        assert ("password" in text.split("[[users]]", 1)[1]) == with_secrets
        exported = parse_directory(keep_secrets(tomllib.loads(text), data), "export.toml")
        report = await store.apply_directory(exported)
        assert not report.changed
        assert exported.user("102").mobile == "+15145550123"  # type: ignore[union-attr]
        assert exported.user("102").password == "bruno-secret-102"  # type: ignore[union-attr]


def test_a_file_without_secrets_keeps_the_stored_ones_only() -> None:
    stored = {"users": [{"extension": "101", "password": "old-sip", "voicemail_pin": "2468"},
                        {"extension": "102", "password": "b-sip", "voicemail_pin": ""}],
              "trunks": [{"name": "carrier", "password": "trunk-pw"}]}
    data = {"users": [{"extension": "101"}, {"extension": "102", "password": "new-sip"},
                      {"extension": "103"}, {"extension": "101", "voicemail_pin": ""}],
            "trunks": [{"name": "carrier"}, {"name": "other"}]}
    kept = keep_secrets(data, stored)
    assert kept["users"] == [
        {"extension": "101", "password": "old-sip", "voicemail_pin": "2468"},  # kept
        {"extension": "102", "password": "new-sip"},  # given: taken; no PIN stored
        {"extension": "103"},  # new: nothing to keep, the validator names it
        {"extension": "101", "password": "old-sip", "voicemail_pin": ""}]  # "" empties
    assert kept["trunks"] == [{"name": "carrier", "password": "trunk-pw"}, {"name": "other"}]
    assert data["users"][0] == {"extension": "101"}  # the input is not changed
    assert keep_secrets(data, None) == data


def test_merge_patch_follows_rfc_7396() -> None:
    target: dict[str, Any] = {"a": "b", "c": {"d": "e", "f": "g"}}
    assert merge_patch(target, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": "foo"}, {"a": {"b": "c"}}) == {"a": {"b": "c"}}


def test_the_schema_holds_every_key_the_validator_declares() -> None:
    assert schema.check_declarations() == []
    users = schema.TABLE_SCHEMAS["users"]
    from provisioning.model import RECORD_CALLS, STATUSES
    assert users["status"]["enum"] == list(STATUSES)
    assert users["record_calls"]["enum"] == list(RECORD_CALLS)


def test_the_openapi_document_is_valid_and_shares_its_schemas() -> None:
    """OpenAPI 3.1 valid; every schema of schema.components() is written once, under
    components/schemas, and referenced: none is inlined in a path or in another."""
    document = openapi()
    validate_openapi(document)
    shared = schema.components()
    assert set(shared) <= set(document["components"]["schemas"])
    inlined = {json.dumps(s, sort_keys=True): name for name, s in shared.items()}
    refs: set[str] = set()

    def walk(node: Any, own: str) -> None:
        if isinstance(node, dict):
            name = inlined.get(json.dumps(node, sort_keys=True))
            assert name is None or name == own, f"{name} inlined in {own or 'paths'}"
            if "$ref" in node:
                refs.add(node["$ref"])
            for value in node.values():
                walk(value, "")
        elif isinstance(node, list):
            for value in node:
                walk(value, "")

    walk(document["paths"], "")
    for name, body in document["components"]["schemas"].items():
        for value in body.values():
            walk(value, name)
    assert {f"#/components/schemas/{name}" for name in shared} <= refs
    user = document["paths"][f"{PREFIX}/users/{{key}}"]
    assert user["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/User"}
    assert user["patch"]["requestBody"]["content"]["application/merge-patch+json"][
        "schema"] == {"$ref": "#/components/schemas/UserPatch"}


async def test_limiter_locks_an_account_and_a_source(store: Store) -> None:
    limiter = AttemptLimiter(store, "sign_in", account_limit=3, source_limit=5, window=60,
                             lock_seconds=100)
    for i in range(3):
        assert await limiter.locked("user:101", "10.0.0.1", i) is None
        await limiter.failed("user:101", "10.0.0.1", i)
    locked = await limiter.locked("user:101", "10.0.0.2", 3)
    assert locked is not None and locked[0] == "account" and locked[1] == 99
    # another limiter on the same store (another node) sees the same lock
    other = AttemptLimiter(store, "sign_in", account_limit=3, source_limit=5, window=60,
                           lock_seconds=100)
    assert await other.locked("user:101", "10.0.0.3", 50) == ("account", 52)
    assert await other.locked("user:101", "10.0.0.2", 103) is None  # the lock ends
    # failures older than the window are forgotten
    await limiter.failed("user:102", "10.0.1.1", 200)
    await limiter.failed("user:102", "10.0.1.2", 201)
    await limiter.failed("user:102", "10.0.1.3", 300)
    assert await limiter.locked("user:102", "10.0.1.4", 301) is None
    for i in range(5):
        await limiter.failed(f"name:x{i}", "10.0.0.9", 400)
    locked = await limiter.locked("user:103", "10.0.0.9", 401)
    assert locked is not None and locked[0] == "source"
    # a success clears the account's count, not the source's
    await other.failed("user:104", "10.0.2.1", 500)
    await other.failed("user:104", "10.0.2.1", 500)
    await other.succeeded("user:104")
    await other.failed("user:104", "10.0.2.1", 501)
    await other.failed("user:104", "10.0.2.1", 501)
    assert await other.locked("user:104", "10.0.2.2", 502) is None
    # scopes are apart: reset requests do not count as sign-ins
    resets = AttemptLimiter(store, "reset", account_limit=1)
    await resets.failed("user:105", "10.0.3.1", 600)
    assert await limiter.locked("user:105", "10.0.3.1", 601) is None
    assert await resets.locked("user:105", "10.0.3.1", 601) is not None


def test_secretbox_seals_opens_and_refuses_another_key_or_row() -> None:
    box = SecretBox(secrets.token_bytes(32))
    sealed = box.seal("JBSWY3DPEHPK3PXP", "totp:101")
    assert sealed.startswith(f"sb1:{box.key_id}:") and "JBSWY3DPEHPK3PXP" not in sealed
    assert box.seal("JBSWY3DPEHPK3PXP", "totp:101") != sealed  # a fresh nonce each time
    assert box.open(sealed, "totp:101") == "JBSWY3DPEHPK3PXP"
    assert box.open("JBSWY3DPEHPK3PXP", "totp:101") == "JBSWY3DPEHPK3PXP"  # before sealing
    with pytest.raises(SecretBoxError, match="moved from another row"):
        box.open(sealed, "totp:102")
    with pytest.raises(SecretBoxError, match="sealed with key"):
        SecretBox(secrets.token_bytes(32)).open(sealed, "totp:101")
    at = len(sealed) - 20  # a character inside the ciphertext (the last ones carry padding)
    tampered = sealed[:at] + ("A" if sealed[at] != "A" else "B") + sealed[at + 1:]
    with pytest.raises(SecretBoxError):
        box.open(tampered, "totp:101")


async def test_sign_in_with_totp(store: Store, directory: Directory) -> None:
    await store.apply_directory(directory)
    await store.set_web_password("101", hash_password("alice-web-password"))
    box = SecretBox(secrets.token_bytes(32))
    auth = Authenticator(store, box)
    token, _, user = await auth.sign_in(directory, "ALICE@example.test", "alice-web-password",
                                        None, "127.0.0.1", 1000.0)
    assert user.extension == "101"
    p = await auth.principal(f"Bearer {token}", directory, 1001.0)
    assert p.role == "department_admin" and p.department == "Sales"
    enrolment = await enrol_totp(store, box, user, "pbx.example.test")
    assert enrolment.uri.startswith("otpauth://totp/")
    with pytest.raises(ApiError) as caught:
        await auth.sign_in(directory, "101", "alice-web-password", None, "127.0.0.1", 1000.0)
    assert caught.value.errors[0][0] == "code"
    code = pyotp.TOTP(enrolment.secret).at(1000.0)
    await auth.sign_in(directory, "101", "alice-web-password", code, "127.0.0.1", 1000.0)
    record = await store.totp("101")
    assert record is not None and enrolment.secret not in record.secret  # sealed
    assert not await check_second_factor(store, box, record, code, 1000.0)  # used once
    assert await check_second_factor(store, box, record, enrolment.recovery_codes[0], 1000.0)
    with pytest.raises(ApiError) as caught:
        await auth.principal("Bearer not-a-token", directory, 1001.0)
    assert caught.value.status == 401


async def test_seeds_stored_in_clear_are_sealed_and_still_sign_in(
        store: Store, directory: Directory) -> None:
    from provisioning.api.auth import seal_stored_totp
    from provisioning.model import TotpRecord

    await store.apply_directory(directory)
    await store.set_web_password("101", hash_password("alice-web-password"))
    seed = pyotp.random_base32()
    # as an earlier version stored it
    await store.set_totp(TotpRecord(extension="101", secret=seed))
    box = SecretBox(secrets.token_bytes(32))
    assert await seal_stored_totp(store, box) == 1
    assert await seal_stored_totp(store, box) == 0  # once
    record = await store.totp("101")
    assert record is not None and box.is_sealed(record.secret)
    assert seed not in record.secret
    code = pyotp.TOTP(seed).at(5000.0)
    auth = Authenticator(store, box)
    await auth.sign_in(directory, "101", "alice-web-password", code, "127.0.0.1", 5000.0)
    # under another key the seed does not open: the code is refused, not crashed on
    other = Authenticator(store, SecretBox(secrets.token_bytes(32)))
    with pytest.raises(ApiError) as caught:
        await other.sign_in(directory, "101", "alice-web-password",
                            pyotp.TOTP(seed).at(5030.0), "127.0.0.1", 5030.0)
    assert caught.value.status == 401


def test_the_key_file_is_made_once_with_mode_0600(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("SWITCHBOARD_SECRET_KEY", raising=False)
    first = SecretBox.for_data_dir(tmp_path)
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    assert SecretBox.for_data_dir(tmp_path).key_id == first.key_id  # read, not remade
    key = (tmp_path / "secret.key").read_text().strip()
    monkeypatch.setenv("SWITCHBOARD_SECRET_KEY", key)
    assert SecretBox.for_data_dir(tmp_path / "elsewhere").key_id == first.key_id
    assert not (tmp_path / "elsewhere" / "secret.key").exists()  # the variable wins
    monkeypatch.setenv("SWITCHBOARD_SECRET_KEY", "too-short")
    with pytest.raises(SecretBoxError, match="SWITCHBOARD_SECRET_KEY"):
        SecretBox.for_data_dir(tmp_path)


async def test_srtp_is_written_through_the_api_and_a_bad_value_refused(
        api: DirectoryApi, store: Store) -> None:
    await api.update(OWNER, "users", "102", {"srtp": "allowed"}, 1, "test")
    loaded = await store.load_directory()
    assert loaded is not None and loaded.user("102").srtp == "allowed"  # type: ignore[union-attr]
    with pytest.raises(ApiError) as caught:
        await api.update(OWNER, "users", "102", {"srtp": "always"}, 2, "test")
    assert caught.value.status == 422
    assert [path for path, _ in _errors(caught)] == ["users[1].srtp"]


async def test_a_queue_s_priority_callers_and_language_through_the_api(
        api: DirectoryApi, store: Store) -> None:
    await api.update(OWNER, "queues", "support",
                     {"priority_callers": ["+15145550123", "+1438*"], "language": "fr"}, 1,
                     "test")
    loaded = await store.load_directory()
    assert loaded is not None
    [queue] = loaded.queues
    assert (queue.priority_callers, queue.language) == (("+15145550123", "+1438*"), "fr")
    with pytest.raises(ApiError) as caught:
        await api.update(OWNER, "queues", "support", {"priority_callers": ["vip"]}, 2, "test")
    assert caught.value.status == 422
    assert [path for path, _ in _errors(caught)] == ["queues[0].priority_callers[0]"]
    with pytest.raises(ApiError) as caught:
        await api.update(OWNER, "queues", "support", {"language": "de"}, 2, "test")
    assert [path for path, _ in _errors(caught)] == ["queues[0].language"]
