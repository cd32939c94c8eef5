"""Users in bulk through the admin API's one write path, on SQLite AND PostgreSQL:
CSV import and export in a 3CX user export's columns (all or nothing, errors by row
and column, dry run, round trip, secrets never exported)."""

# ruff: noqa: F811  (the store fixtures, imported, are parameters here)
from __future__ import annotations

import pytest

from provisioning.api.auth import Principal
from provisioning.api.errors import ApiError
from provisioning.api.resources import DirectoryApi
from provisioning.model import Directory
from provisioning.store import Store
from provisioning.usercsv import parse_csv
from tests.test_provisioning_store import (  # noqa: F401  (fixtures)
    backend,
    directory,
    store,
)

OWNER = Principal(actor="user:900", role="owner", extension="900", department="Sales")
ALICE = Principal(actor="user:101", role="department_admin", extension="101",
                  department="Sales")
BRUNO = Principal(actor="user:102", role="user", extension="102", department="Sales")

# As a 3CX user export writes it (its own columns kept: DID, web meeting, hot desking...),
# with Excel's byte order mark; two new users and one changed.
THREECX = (
    "\ufeffNumber,FirstName,LastName,EmailAddress,MobileNumber,OutboundCallerID,DID,"
    "WebMeetingFriendlyName,WebMeetingPrivateRoom,ClickToCall,ClickToCallFriendlyName,"
    "WebMeetingAcceptReject,EnableVoicemail,AuthID,AuthPassword,PIN,VMNoPin,VMPlayCallerID,"
    "VMPlayMsgDateTime,VMEmailOptions,MAC,EnableHotdesking,Department\r\n"
    "104,Denis,Côté,denis@example.test,+15145550144,,+15145550104,denis-cote,0,1,CallDenis,"
    "0,1,104,denis-sip-secret-104,4321,0,1,2,2,001565A1B2C3,0,Sales\r\n"
    "105,Élise,\"Roy, Jr\",elise@example.test,,+15145550100,,,0,0,,0,0,,elise-sip-secret-105,"
    ",1,0,0,0,,0,Sales\r\n"
    "102,Bruno,Tremblay,bruno.t@example.test,+15145550122,,,,0,0,,0,1,102,,,0,1,2,1,,0,"
    "Sales\r\n"
)


@pytest.fixture
async def api(store: Store, directory: Directory) -> DirectoryApi:
    await store.apply_directory(directory)
    return DirectoryApi(store)


async def test_a_3cx_export_imports_mapped_and_ignored_columns_named(
        api: DirectoryApi, store: Store) -> None:
    dry, revision = await api.import_users(OWNER, THREECX, 1, "test", dry_run=True)
    assert revision == 1 and await store.directory_revision() == 1  # a dry run stores nothing
    assert dry["added"] == ["104", "105"] and dry["unchanged"] == []
    assert dry["changed"] == {"102": ["email", "voicemail.announce_caller",
                                      "voicemail.email"]}
    assert dry["ignored_columns"] == ["ClickToCall", "ClickToCallFriendlyName", "DID",
                                      "EnableHotdesking", "MAC", "WebMeetingAcceptReject",
                                      "WebMeetingFriendlyName", "WebMeetingPrivateRoom"]
    report, revision = await api.import_users(OWNER, THREECX, 1, "10.0.0.5")
    assert revision == 2 and report == dry | {"dry_run": False}
    loaded = await store.load_directory()
    assert loaded is not None
    denis, elise, bruno = loaded.user("104"), loaded.user("105"), loaded.user("102")
    assert denis is not None and elise is not None and bruno is not None
    assert (denis.name, denis.email, denis.mobile, denis.password, denis.voicemail_pin) == (
        "Denis Côté", "denis@example.test", "+15145550144", "denis-sip-secret-104", "4321")
    assert denis.voicemail.pin_required and denis.voicemail.announce_caller
    assert (denis.voicemail.read_datetime, denis.voicemail.email) == ("24h", "attach")
    assert elise.name == "Élise Roy, Jr" and not elise.voicemail.enabled
    assert not elise.voicemail.pin_required and elise.outbound_caller_id == "+15145550100"
    assert bruno.email == "bruno.t@example.test" and bruno.voicemail.email == "notify"
    assert bruno.password == "bruno-secret-102"  # an empty AuthPassword keeps the secret
    audit = await store.list_audit(limit=10)
    assert sorted(e.target for e in audit if e.action == "users.import") == [
        "users/102", "users/104", "users/105"]  # one entry per user, one revision
    assert all("secret" not in repr(e) and "4321" not in repr(e) for e in audit)


async def test_errors_name_row_and_column_and_nothing_is_applied(
        api: DirectoryApi, store: Store) -> None:
    bad = ("Number,FirstName,LastName,EmailAddress,AuthID,VMNoPin,VMEmailOptions,Department\n"
           "106,Ann,Ok,ann@example.test,,0,0,Sales\n"
           "107,Bad,Flag,b@example.test,107,maybe,9,Sales\n"
           "108,Other,Auth,o@example.test,9999,1,1,Sales\n"
           ",No,Number,,,,,Sales\n"
           "106,Twice,Here,,,,,Sales\n")
    with pytest.raises(ApiError) as caught:
        await api.import_users(OWNER, bad, None, "test")
    assert caught.value.status == 422
    paths = [p for p, _ in caught.value.errors]
    assert paths == ["row 3, column VMNoPin", "row 3, column VMEmailOptions",
                     "row 4, column AuthID", "row 5, column Number", "row 6, column Number"]
    assert "is not 0 or 1" in caught.value.errors[0][1]
    assert "also on row 2" in caught.value.errors[4][1]
    # the directory's own checks, in the file's coordinates
    unknown = ("Number,FirstName,EmailAddress,Department\n"
               "109,Zoe,zoe@example.test,Sales\n"
               "110,Yan,yan@example.test,Nowhere\n"
               "1111,Long,long@example.test,Sales\n")
    with pytest.raises(ApiError) as caught:
        await api.import_users(OWNER, unknown, None, "test")
    assert caught.value.status == 422
    found = dict(caught.value.errors)
    assert "row 3, column Department" in found and "Nowhere" in found["row 3, column Department"]
    assert "row 4, column Number" in found
    assert await store.directory_revision() == 1  # all or nothing
    loaded = await store.load_directory()
    assert loaded is not None and loaded.user("109") is None


async def test_export_round_trips_without_secrets(api: DirectoryApi, store: Store) -> None:
    text, revision = await api.export_users(OWNER)
    assert revision == 1
    assert text.splitlines()[0].startswith("Number,FirstName,LastName,EmailAddress")
    assert "secret" not in text and "1234" not in text  # passwords and PINs never leave
    rows, ignored, errors = parse_csv(text)
    assert errors == [] and ignored == [] and len(rows) == 6
    report, again = await api.import_users(OWNER, text, 1, "test")
    assert report["added"] == [] and report["changed"] == {} and again == 1
    assert len(report["unchanged"]) == 6
    await api.import_users(OWNER, THREECX, 1, "test")
    text, _ = await api.export_users(OWNER)
    assert "\"Roy, Jr\"" in text and "denis-sip-secret" not in text
    report, _ = await api.import_users(OWNER, text, None, "test")
    assert report["changed"] == {} and report["added"] == []


async def test_import_and_export_follow_the_roles(api: DirectoryApi, store: Store) -> None:
    with pytest.raises(ApiError) as caught:
        await api.export_users(BRUNO)
    assert caught.value.status == 403
    text, _ = await api.export_users(ALICE)  # a department admin: their department only
    assert {line.split(",")[0] for line in text.splitlines()[1:]} == {"101", "102", "103"}
    moved = "Number,FirstName,LastName,Department\n201,David,Roy,Sales\n"
    with pytest.raises(ApiError) as caught:
        await api.import_users(ALICE, moved, None, "test")
    assert caught.value.status == 403
    assert caught.value.errors == [("row 2, column Number", "you may not change user 201")]
    support = "Number,FirstName,LastName,Department,AuthPassword\n150,New,Hire,Support,s-150-pw\n"
    with pytest.raises(ApiError) as caught:
        await api.import_users(ALICE, support, None, "test")
    assert caught.value.status == 403 and caught.value.errors[0][0].startswith("row 2")
    hire = "Number,FirstName,LastName,Department\n151,New,Hire,Sales\n"
    with pytest.raises(ApiError) as caught:  # a new user's SIP secret is required
        await api.import_users(ALICE, hire, None, "test")
    assert caught.value.errors == [("row 2, column AuthPassword", "missing (required)")]
    report, _ = await api.import_users(
        ALICE, hire.replace("Department\n", "Department,AuthPassword\n").replace(
            "Sales\n", "Sales,hire-sip-151\n"), None, "test")
    assert report["added"] == ["151"]


async def test_copy_takes_settings_and_makes_new_credentials(api: DirectoryApi,
                                                             store: Store) -> None:
    data, _ = await store.load_directory_data()
    assert data is not None
    alice = next(u for u in data["users"] if u["extension"] == "101")
    row, revision = await api.copy_user(OWNER, "101", {
        "extension": "110", "name": "Hugo Martin", "email": "hugo@example.test",
        "mobile": "+15145550110"}, 1, "test")
    assert revision == 2 and row["extension"] == "110" and row["name"] == "Hugo Martin"
    secret, pin = row.pop("sip_password"), row.pop("voicemail_pin")
    assert len(secret) >= 20 and pin.isdigit() and len(pin) == 6
    assert "password" not in row and row["password_set"] is True
    loaded = await store.load_directory()
    assert loaded is not None
    hugo = loaded.user("110")
    assert hugo is not None and hugo.password == secret and hugo.voicemail_pin == pin
    data, _ = await store.load_directory_data()
    assert data is not None
    copied = next(u for u in data["users"] if u["extension"] == "110")
    for key in ("department", "role", "codecs", "schedule", "external_calls", "record_calls",
                "accept_multiple_calls", "outbound_pin_required"):
        assert copied[key] == alice[key], key
    for status, table in alice["forwarding"].items():
        assert {k: v for k, v in copied["forwarding"][status].items() if k != "greeting"} == \
            {k: v for k, v in table.items() if k != "greeting"}
        assert copied["forwarding"][status]["greeting"] == "default"  # never her voice
    assert copied["voicemail"]["greeting"] == "default"
    assert copied["password"] != alice["password"] and copied["email"] == "hugo@example.test"
    entry = (await store.list_audit(limit=1, target="users/110"))[0]
    assert entry.action == "users.copy" and entry.before == {"from": "101"}
    assert secret not in repr(entry) and pin not in repr(entry)


async def test_copy_refusals_are_named(api: DirectoryApi, store: Store) -> None:
    with pytest.raises(ApiError) as caught:
        await api.copy_user(OWNER, "101", {"extension": "102", "name": "Dup"}, None, "t")
    assert caught.value.status == 422 and any("102" in m for _, m in caught.value.errors)
    with pytest.raises(ApiError) as caught:
        await api.copy_user(OWNER, "101", {"name": "", "pin": "1"}, None, "t")
    assert caught.value.status == 400
    assert [p for p, _ in caught.value.errors] == ["extension", "name", "pin"]
    with pytest.raises(ApiError) as caught:  # what one may not see is not there
        await api.copy_user(ALICE, "201", {"extension": "111", "name": "X"}, None, "t")
    assert caught.value.status == 404
    with pytest.raises(ApiError) as caught:  # her settings need what only she gave
        await api.copy_user(ALICE, "101", {"extension": "111", "name": "X"}, None, "t")
    assert caught.value.status == 422
    found = dict(caught.value.errors)
    assert found["users[6].voicemail.email"] == "'attach' needs the user's email address"
    assert "no mobile number" in found["users[6].forwarding.away.no_answer.external"]
    with pytest.raises(ApiError) as caught:
        await api.copy_user(BRUNO, "102", {"extension": "112", "name": "Me Too"}, None, "t")
    assert caught.value.status == 403
    assert await store.directory_revision() == 1


async def test_bulk_edit_is_one_revision_and_an_audit_entry_per_user(
        api: DirectoryApi, store: Store) -> None:
    body = {"extensions": ["101", "102", "103"], "set": {"record_calls": "external",
                                                         "codecs": ["PCMA", "PCMU"]}}
    result, revision = await api.bulk_update(ALICE, body, 1, "10.0.0.9")
    assert revision == 2 and result["unchanged"] == []
    assert result["changed"] == {e: ["codecs", "record_calls"] for e in ("101", "102", "103")}
    loaded = await store.load_directory()
    assert loaded is not None
    assert all(loaded.user(e).record_calls == "external"  # type: ignore[union-attr]
               for e in ("101", "102", "103"))
    entries = [e for e in await store.list_audit(limit=10) if e.action == "users.bulk_update"]
    assert sorted(e.target for e in entries) == ["users/101", "users/102", "users/103"]
    assert entries[0].after == {"codecs": ["PCMA", "PCMU"], "record_calls": "external"}
    again, same = await api.bulk_update(ALICE, body, None, "t")
    assert same == 2 and again == {"changed": {}, "unchanged": ["101", "102", "103"]}


async def test_bulk_edit_is_all_or_nothing(api: DirectoryApi, store: Store) -> None:
    cases: list[tuple[Principal, dict[str, object], int, list[str]]] = [
        (ALICE, {"extensions": ["102", "201"], "set": {"record_calls": "all"}}, 404,
         ["extensions[1]"]),  # a user one may not see is not there
        (OWNER, {"extensions": ["102", "109"], "set": {"record_calls": "all"}}, 404,
         ["extensions[1]"]),
        (OWNER, {"extensions": ["102", "103"], "set": {"record_calls": "sometimes"}}, 422,
         ["users[1].record_calls", "users[2].record_calls"]),
        (OWNER, {"extensions": ["102"], "set": {"password": "same-for-all"}}, 422,
         ["set.password"]),
        (OWNER, {"extensions": [], "set": {}, "more": 1}, 400, ["more", "extensions", "set"]),
        (BRUNO, {"extensions": ["102"], "set": {"record_calls": "all"}}, 403,
         ["users[1].record_calls"]),
    ]
    for who, body, status, paths in cases:
        with pytest.raises(ApiError) as caught:
            await api.bulk_update(who, body, None, "t")
        assert caught.value.status == status, (body, caught.value.errors)
        assert [p for p, _ in caught.value.errors] == paths, caught.value.errors
    # a user sets their own forwarding through the same route
    result, revision = await api.bulk_update(
        BRUNO, {"extensions": ["102"], "set": {"forwarding": {"lunch": {
            "no_answer_seconds": 12}}}}, None, "t")
    assert result["changed"] == {"102": ["forwarding.lunch.no_answer_seconds"]}
    assert revision == 2 and await store.directory_revision() == 2


def test_formula_cells_are_neutralised_and_restored_exactly() -> None:
    from provisioning.usercsv import export_csv, neutralise, restore

    for cell in ("=HYPERLINK(\"http://x\")", "+15145550144", "-2+3", "@SUM(A1)", "\t=1",
                 "\r=1"):
        assert neutralise(cell) == "'" + cell and restore(neutralise(cell)) == cell
    for cell in ("Denis", "'quoted", "''=x", "a=b", ""):  # left as they are, both ways
        assert neutralise(cell) == cell and restore(cell) == cell
    text = export_csv([{"extension": "104", "name": "=cmd|' /C calc'!A0 Evil",
                        "mobile": "+15145550144", "email": "@x@example.test"}])
    row = text.splitlines()[1].split(",")
    assert row[1:3] == ["'=cmd|'", "/C calc'!A0 Evil"] and row[4] == "'+15145550144"
    assert row[3] == "'@x@example.test"
    rows, _, errors = parse_csv(text)
    assert errors == [] and rows[0].values["name"] == "=cmd|' /C calc'!A0 Evil"
    assert rows[0].values["mobile"] == "+15145550144"


async def test_a_formula_name_round_trips_through_export_and_import(
        api: DirectoryApi, store: Store) -> None:
    await api.update(OWNER, "users", "102", {"name": "=1+2 Bruno", "mobile": "+15145550122"},
                     1, "test")
    text, revision = await api.export_users(OWNER)
    assert "\r\n102,'=1+2,Bruno," in text and ",'+15145550122," in text
    report, again = await api.import_users(OWNER, text, revision, "test")
    assert report["changed"] == {} and again == revision  # exactly undone: no change
    loaded = await store.load_directory()
    assert loaded is not None and loaded.user("102").name == "=1+2 Bruno"  # type: ignore[union-attr]
