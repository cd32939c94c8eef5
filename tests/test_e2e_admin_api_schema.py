"""Schemathesis over every operation of ``/api/v1``, against a real engine, as an
owner and as a user: no 5xx, every response as the OpenAPI document says, and
input the schema refuses is refused (4xx) by the API, with the field named.

Bounded: a few examples per operation (positive and negative), no example
database, one engine per role (an owner's writes must not sign the user out).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS

from provisioning.api.http import PREFIX, openapi
from tests.conftest import EXAMPLE, EngineProcess
from tests.test_e2e_admin_api import EXT, set_password, sign_in


@schemathesis.serializer("audio/wav")
def _audio(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    """A greeting upload's body goes as the bytes generated (any: the API checks them)."""
    return value if isinstance(value, bytes) else str(value).encode()


# The events stream stays open for up to 25 s by design: tests/test_e2e_admin_events.py
# reads it; here it would only run into the client's timeout.
SCHEMA = schemathesis.openapi.from_dict(openapi()).exclude(path=f"{PREFIX}/events")
SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=8, allow_x00=False, database="none")
# "positive_data_acceptance" would ask every schema-valid body to be taken; the schema
# cannot say that a department must exist or an extension have the system's length
# (the validator's cross-table rules), so a valid-looking body may be refused (422).
EXCLUDED = [c for c in CHECKS.get_all() if c.__name__ == "positive_data_acceptance"]


@pytest.fixture(scope="module", params=["owner", "user"])
def signed_in(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EngineProcess, str]]:
    role = request.param
    folder = tmp_path_factory.mktemp(f"schema-{role}")
    directory = folder / "directory.toml"
    directory.write_text(EXAMPLE.read_text().replace('name = "Emma Lavoie"',
                                                     'name = "Emma Lavoie"\nrole = "owner"'))
    engine = EngineProcess(folder, directory).start()
    set_password(engine, EXT[role], f"{role}-web-password")
    client = sign_in(engine.http_port, EXT[role], f"{role}-web-password")
    yield engine, client.token
    code = engine.stop()
    log = engine.log()
    assert code == 0, log
    # the log line that carries the traceback, not the whole log, so a failure says what broke
    assert "Traceback" not in log, [line for line in log.splitlines() if "Traceback" in line][:3]


def test_the_served_document_is_the_one_tested(signed_in: tuple[EngineProcess, str]) -> None:
    engine, _ = signed_in
    with urllib.request.urlopen(f"http://127.0.0.1:{engine.http_port}{PREFIX}/openapi.json",
                                timeout=10) as answer:
        assert json.loads(answer.read()) == json.loads(json.dumps(openapi()))


@SCHEMA.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation(case: schemathesis.Case, signed_in: tuple[EngineProcess, str]) -> None:
    engine, token = signed_in
    response = case.call_and_validate(base_url=f"http://127.0.0.1:{engine.http_port}",
                                      headers={"Authorization": f"Bearer {token}"},
                                      excluded_checks=EXCLUDED, timeout=10)
    # (a method no route has gets aiohttp's own 405 with Allow, outside the document)
    if response.status_code in (400, 401, 403, 409, 412, 422, 428, 429):
        errors = response.json()["errors"]
        assert errors and all(e["message"] for e in errors)
        if response.status_code == 422:  # a refusal by validation names the field
            assert all(e["path"] for e in errors), errors
