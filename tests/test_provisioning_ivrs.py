"""``[[ivrs]]`` and ``[[queues]]`` in the directory file (shared/spec/directory-next.toml):
read, defaults, round trip, and every error named by file, table and key, the whole
file refused. The example office (examples/directory.toml) has one of each."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from media.tones import tone
from media.wav import write_wav
from provisioning.directory import (
    DirectoryError,
    directory_to_dict,
    load_directory,
    parse_directory,
)
from provisioning.model import Destination, priority_caller
from tests.test_provisioning_directory import EXAMPLE, EXAMPLE_DATA, assert_error, errors_of

NEXT = Path(__file__).resolve().parent.parent.parent / "shared" / "spec" / "directory-next.toml"


@pytest.fixture
def data() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE_DATA)


def test_the_example_ivr_and_queue_are_read_and_round_trip() -> None:
    d = load_directory(EXAMPLE)
    [ivr] = d.ivrs
    assert (ivr.name, ivr.extension, ivr.language, ivr.department) == (
        "reception", "850", "fr", "Sales")
    assert ivr.key("1") == Destination("ring_group", "sales")
    assert ivr.key("3") is None
    assert ivr.on_invalid == Destination("ivr", "reception")
    assert ivr.outside_office_hours == Destination("voicemail", "101")
    assert d.ivrs_by_extension["850"] is ivr
    [queue] = d.queues
    assert (queue.strategy, queue.agents, queue.when_no_agents) == (
        "longest_idle", ("201", "202"), None)
    assert parse_directory(directory_to_dict(d)) == d


def test_the_contract_tables_parse_with_their_references(data: dict[str, Any]) -> None:
    """The [[ivrs]] and [[queues]] of directory-next.toml, in the example office."""
    with NEXT.open("rb") as f:
        nxt = tomllib.load(f)
    ivr, queue = nxt["ivrs"][0], nxt["queues"][0]
    ivr.pop("prompt")
    ivr["text"] = "Bonjour"
    ivr["extension"], queue["extension"] = "851", "861"
    queue["name"] = "help"
    ivr["keys"]["1"] = "queue:help"
    data["ivrs"] = [ivr]
    data["queues"] = [queue]
    d = parse_directory(data, "directory.toml")
    assert d.ivrs[0].timeout_seconds == 6 and d.ivrs[0].repeat == 2
    assert d.queues[0].announce_position_every == 45


def test_defaults(data: dict[str, Any]) -> None:
    data["ivrs"] = [{"name": "small", "extension": "851", "prompt": "menu.wav",
                     "keys": {"0": "extension:101"}}]
    [ivr] = parse_directory(data).ivrs
    assert (ivr.language, ivr.timeout_seconds, ivr.repeat, ivr.dial_by_extension) == (
        "en", 6, 1, False)
    assert ivr.on_timeout == Destination("busy")
    assert ivr.on_invalid == Destination("ivr", "small")  # the menu again
    assert ivr.outside_office_hours is None


@pytest.mark.parametrize(("row", "path", "fragment"), [
    ({"extension": "851", "prompt": "a.wav", "keys": {"1": "busy"}}, "ivrs[1].name",
     "missing"),
    ({"name": "x", "extension": "851", "keys": {"1": "busy"}}, "ivrs[1].prompt",
     "missing (a WAV file, or text"),
    ({"name": "x", "extension": "851", "prompt": "a.mp3", "keys": {"1": "busy"}},
     "ivrs[1].prompt", "must be a .wav file"),
    ({"name": "x", "extension": "851", "prompt": "a.wav", "text": "hi", "keys": {"1": "busy"}},
     "ivrs[1].text", "not both"),
    ({"name": "x", "extension": "851", "text": "x" * 1001, "keys": {"1": "busy"}},
     "ivrs[1].text", "at most 1000"),
    ({"name": "x", "extension": "851", "prompt": "a.wav"}, "ivrs[1].keys",
     "at least one key, or dial_by_extension"),
    ({"name": "x", "extension": "851", "prompt": "a.wav", "keys": {"10": "busy"}},
     "ivrs[1].keys.10", "unknown key"),
    ({"name": "x", "extension": "851", "prompt": "a.wav", "keys": {"1": "ivr:nowhere"}},
     "ivrs[1].keys.1", "unknown IVR 'nowhere'"),
    ({"name": "x", "extension": "851", "prompt": "a.wav", "keys": {"1": "extension:850"}},
     "ivrs[1].keys.1", "'850' is IVR 'reception'; use 'ivr:reception'"),
    ({"name": "x", "extension": "851", "prompt": "a.wav", "keys": {"#": "voicemail"}},
     "ivrs[1].keys.#", "needs a user"),
    ({"name": "x", "extension": "851", "prompt": "a.wav", "keys": {"1": "busy"},
      "outside_office_hours": "voicemail:101"}, "ivrs[1].outside_office_hours",
     "needs the IVR's department"),
    ({"name": "x", "extension": "851", "prompt": "a.wav", "keys": {"1": "busy"},
      "department": "Nowhere"}, "ivrs[1].department", "unknown department 'Nowhere'"),
    ({"name": "x", "extension": "851", "prompt": "a.wav", "keys": {"1": "busy"},
      "timeout_seconds": 0}, "ivrs[1].timeout_seconds", "at least 1"),
    ({"name": "x", "extension": "851", "prompt": "a.wav", "keys": {"1": "busy"},
      "repeat": 11}, "ivrs[1].repeat", "at most 10"),
    ({"name": "x", "extension": "851", "prompt": "a.wav", "keys": {"1": "busy"},
      "language": "de"}, "ivrs[1].language", "not one of: fr, en"),
    ({"name": "reception", "extension": "851", "prompt": "a.wav", "keys": {"1": "busy"}},
     "ivrs[1].name", "'reception' is already used by ivrs[0]"),
    ({"name": "x", "extension": "101", "prompt": "a.wav", "keys": {"1": "busy"}},
     "ivrs[1].extension", "'101' is already used by users[0]"),
    ({"name": "x", "extension": "999", "prompt": "a.wav", "keys": {"1": "busy"}},
     "ivrs[1].extension", "reserved (system.voicemail_number)"),
])
def test_ivr_errors(data: dict[str, Any], row: dict[str, Any], path: str,
                    fragment: str) -> None:
    data["ivrs"].append(row)
    assert_error(errors_of(data), path, fragment)


@pytest.mark.parametrize(("changes", "path", "fragment"), [
    ({"agents": ["201", "850"]}, "queues[0].agents[1]", "'850' is ivrs[0]; agents are users"),
    ({"agents": ["201", "777"]}, "queues[0].agents[1]", "unknown extension '777'"),
    ({"agents": []}, "queues[0].agents", "at least one extension"),
    ({"strategy": "random"}, "queues[0].strategy", "not one of: ring_all, hunt, round_robin"),
    ({"when_no_agents": "wait"}, "queues[0].when_no_agents", "unknown destination 'wait'"),
    ({"on_timeout": "queue:support2"}, "queues[0].on_timeout", "unknown queue 'support2'"),
    ({"extension": "850"}, "queues[0].extension", "'850' is already used by ivrs[0]"),
    ({"max_callers": 0}, "queues[0].max_callers", "at least 1"),
    ({"priority_callers": ["+1514*", "boss"]}, "queues[0].priority_callers[1]",
     "'boss' is not a number (+15145550199), an extension (101) or a prefix ending in '*'"),
    ({"priority_callers": ["+1*514"]}, "queues[0].priority_callers[0]", "'+1*514' is not"),
    ({"priority_callers": ["101", "101"]}, "queues[0].priority_callers[1]",
     "'101' is listed twice"),
    ({"priority_callers": "101"}, "queues[0].priority_callers", "must be an array"),
    ({"language": "de"}, "queues[0].language", "not one of: fr, en"),
])
def test_queue_errors(data: dict[str, Any], changes: dict[str, Any], path: str,
                      fragment: str) -> None:
    data["queues"][0].update(changes)
    assert_error(errors_of(data), path, fragment)


def test_priority_callers_and_language_are_read_and_round_trip(data: dict[str, Any]) -> None:
    data["queues"][0].update(priority_callers=["+15145550123", "201", "+1438*"],
                             language="fr")
    d = parse_directory(data)
    [queue] = d.queues
    assert queue.priority_callers == ("+15145550123", "201", "+1438*")
    assert queue.language == "fr"
    assert parse_directory(directory_to_dict(d)) == d
    del data["queues"][0]["language"], data["queues"][0]["priority_callers"]
    [plain] = parse_directory(data).queues
    assert (plain.language, plain.priority_callers) == (None, ())  # the defaults
    assert "language" not in directory_to_dict(parse_directory(data))["queues"][0]


def test_priority_caller_matching() -> None:
    patterns = ("+15145550123", "201", "+1438*")
    assert priority_caller(patterns, "+15145550123")
    assert priority_caller(patterns, "201")
    assert priority_caller(patterns, "+14385550001")
    assert not priority_caller(patterns, "+15145550124")
    assert not priority_caller(patterns, "2010")  # an extension matches whole
    assert not priority_caller((), "201")


def test_every_ivr_and_queue_destination_anywhere_must_exist(data: dict[str, Any]) -> None:
    data["numbers"][0]["route_to"] = "ivr:front-desk"
    data["ring_groups"][0]["no_answer"] = "queue:sales"
    errors = errors_of(data)
    assert_error(errors, "numbers[0].route_to", "unknown IVR 'front-desk'")
    assert_error(errors, "ring_groups[0].no_answer", "unknown queue 'sales'")
    with pytest.raises(DirectoryError):  # refused whole
        parse_directory(data)


def test_a_prompt_is_checked_like_a_greeting(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace(
        'text = "Bonjour. Pour les ventes', 'prompt = "menu.wav"\n# text = "Bonjour. Pour les')
    (tmp_path / "directory.toml").write_text(text)
    write_wav(tmp_path / "menu.wav", tone(440, 500), 16000)  # 16 kHz: not a phone prompt
    with pytest.raises(DirectoryError) as info:
        load_directory(tmp_path / "directory.toml")
    assert any("ivrs[0].prompt" in e and "16000 Hz" in e for e in info.value.errors), info.value
    write_wav(tmp_path / "menu.wav", tone(440, 500), 8000)
    d = load_directory(tmp_path / "directory.toml")
    assert d.ivrs[0].prompt == str((tmp_path / "menu.wav").resolve())
