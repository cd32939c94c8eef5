"""Welcome and password-reset emails from a real ``switchboard serve`` through a real
SMTP server (aiosmtpd on 127.0.0.1), over HTTP and the CLI."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from tests.conftest import EXAMPLE, EngineProcess
from tests.test_e2e_admin_api import Client, set_password, sign_in
from tests.test_mail import Relay, _relay

URL = "https://pbx.example.test:8443"
LINK = re.compile(re.escape(URL) + r"/api/v1/auth/reset/([A-Za-z0-9_-]{40,})")


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    yield from _relay()


@pytest.fixture(scope="module")
def office(relay: Relay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    folder = tmp_path_factory.mktemp("admin-mail")
    directory = folder / "directory.toml"
    directory.write_text(EXAMPLE.read_text().replace(
        'smtp = { host = "127.0.0.1", port = 25, sender = "pbx@example.test" }',
        f'smtp = {{ host = "127.0.0.1", port = {relay.port}, sender = "pbx@example.test" }}\n'
        f'admin_url = "{URL}/"'))
    engine = EngineProcess(folder, directory).start()
    set_password(engine, "101", "alice-web-password")
    yield engine
    assert engine.stop() == 0, engine.log()


def _mail_to(relay: Relay, address: str, count: int) -> list[EmailMessage]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [m for m in relay.sink.messages() if address in str(m["To"])]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no email #{count} to {address}: {relay.sink.messages()}")


def _token(message: EmailMessage) -> str:
    body = message.get_body()
    assert body is not None
    found = LINK.search(body.get_content())
    assert found, body.get_content()
    return found[1]


def test_welcome_then_the_link_sets_the_web_password_once(office: EngineProcess,
                                                          relay: Relay) -> None:
    alice = sign_in(office.http_port, "101", "alice-web-password")
    status, answer, _ = alice.call("POST", "/users/102/welcome")
    assert status == 200 and answer["sent_to"] == "bruno@example.test", answer
    (mail,) = _mail_to(relay, "bruno@example.test", 1)
    text = mail.get_body().get_content()  # type: ignore[union-attr]
    assert "102" in text and "bruno-secret-102" in text and "pbx.example.test" in text
    assert f"{URL}/\r\n" in text  # the web sign-in, from [system] admin_url, never the Host
    token = _token(mail)
    anonymous = Client(office.http_port)
    status, answer, _ = anonymous.call("POST", f"/auth/reset/{token}", {"password": "short"})
    assert status == 422 and answer["errors"][0]["path"] == "password"  # link still good
    status, answer, _ = anonymous.call("POST", f"/auth/reset/{token}",
                                       {"password": "bruno-chose-this"})
    assert status == 200 and answer["extension"] == "102", answer
    assert sign_in(office.http_port, "102", "bruno-chose-this").call("GET", "/me")[0] == 200
    status, answer, _ = anonymous.call("POST", f"/auth/reset/{token}",
                                       {"password": "bruno-again-this"})
    assert status == 404 and answer["errors"][0]["path"] == "token"  # used up
    assert token not in office.log() and "bruno-secret-102" not in office.log()

    status, answer, _ = alice.call("POST", "/users/103/welcome")  # Chloé has no email
    assert status == 422 and answer["errors"] == [
        {"path": "users[2].email", "message": "user 103 has no email address"}]
    assert alice.call("POST", "/users/201/welcome")[0] == 404  # not hers to see

    done = office.cli("users", "welcome", "201")
    assert done.returncode == 0, done.stderr
    assert "welcome sent to david@example.test" in done.stdout
    assert _token(_mail_to(relay, "david@example.test", 1)[0])


def test_reset_says_nothing_about_the_account_and_is_rate_limited(office: EngineProcess,
                                                                  relay: Relay) -> None:
    anonymous = Client(office.http_port)
    known = anonymous.call("POST", "/auth/reset", {"user": "Alice@Example.test"})
    unknown = anonymous.call("POST", "/auth/reset", {"user": "nobody@example.test"})
    assert known[0] == unknown[0] == 202 and known[1] == unknown[1]
    (mail,) = _mail_to(relay, "alice@example.test", 1)
    assert "Réinitialiser" in str(mail["Subject"])  # her mailbox's language (fr)
    token = _token(mail)
    status, answer, _ = anonymous.call("POST", f"/auth/reset/{token}",
                                       {"password": "alice-new-password"})
    assert status == 200 and answer["extension"] == "101"
    assert sign_in(office.http_port, "alice@example.test", "alice-new-password")
    assert not [m for m in relay.sink.messages() if "nobody" in str(m["To"])]

    # three emails per account in 15 minutes, then silence (still 202)
    david = len([m for m in relay.sink.messages() if "david@" in str(m["To"])])
    for _ in range(4):
        assert anonymous.call("POST", "/auth/reset", {"user": "201"})[0] == 202
    _mail_to(relay, "david@example.test", david + 3)
    time.sleep(0.5)
    assert len([m for m in relay.sink.messages() if "david@" in str(m["To"])]) == david + 3
    # ten requests per address (of any account): then 429 with Retry-After
    statuses = [anonymous.call("POST", "/auth/reset", {"user": "nobody"})
                for _ in range(10)]
    refused = [s for s in statuses if s[0] == 429]
    assert refused and "Retry-After" in refused[0][2], [s[0] for s in statuses]
    audit = office.cli("audit", "--json", "--target", "users/101")
    assert '"auth.reset"' in audit.stdout and token not in audit.stdout
