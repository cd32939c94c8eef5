"""What a deployment installs: the built wheel, in a fresh virtual environment
outside the checkout, runs the example office.

The rest of the suite runs the editable install, which sees every file of the
source tree whether or not the package ships it. Here the wheel is built from a
clean copy of the tracked sources, installed with its dependencies into a new
venv, and run from a folder that is not the checkout, so a module or a data
file the package leaves out fails this test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.sip.message import Response, parse
from tests.conftest import ROOT, EngineProcess, free_port, udp_exchange
from tests.e2e_helpers import register_udp

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from calls import run_uac, start_uas

pytestmark = pytest.mark.peers

PACKAGES = ("engine", "routing", "media", "provisioning")
DOMAIN = "pbx.example.test"  # examples/directory.toml
PASSWORDS = {"102": "bruno-secret-102", "201": "david-secret-201"}


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def source_modules() -> list[str]:
    """Every module of the source tree, by dotted name."""
    names: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def data_files() -> list[str]:
    """Files the engine reads at run time, relative to the source root."""
    found = [p for p in (ROOT / "media" / "prompts").rglob("*.wav")]
    found += [p for package in PACKAGES for p in (ROOT / package).rglob("py.typed")]
    return sorted(str(p.relative_to(ROOT)) for p in found)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin folder of a new venv with the wheel (and only the wheel) installed."""
    work = tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    source = work / "src"
    for name in filter(None, tracked):
        if (ROOT / name).is_file():  # a file deleted in the work tree is not shipped
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
          str(source)], cwd=work)
    wheels = list(dist.glob("switchboard-*.whl"))
    assert len(wheels) == 1, wheels
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    _run([str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])], cwd=work)
    shutil.rmtree(source)  # nothing of the sources is left to import from
    yield venv / "bin"


def test_every_module_and_data_file_ships(installed: Path, tmp_path: Path) -> None:
    modules = source_modules()
    files = data_files()
    script = (
        "import importlib, pathlib, sys\n"
        f"modules, files = {modules!r}, {files!r}\n"
        "missing = []\n"
        "for name in modules:\n"
        "    module = importlib.import_module(name)\n"
        "    if 'site-packages' not in str(module.__file__):\n"
        "        missing.append(f'{name} imported from {module.__file__}')\n"
        "site = pathlib.Path(importlib.import_module('engine').__file__).parents[1]\n"
        "missing += [f for f in files if not (site / f).is_file()]\n"
        "print('\\n'.join(missing))\n"
    )
    out = _run([str(installed / "python"), "-c", script], cwd=tmp_path)
    assert out.strip() == "", f"not in the installed package:\n{out}"
    assert len(modules) > 40 and len(files) > 100  # the walk found the tree


def test_version_names_the_c_parser(installed: Path, tmp_path: Path) -> None:
    out = _run([str(installed / "switchboard"), "--version"], cwd=tmp_path)
    assert out.strip() == "switchboard 0.1.0 (parser: c)"


def test_installed_engine_serves_the_example(installed: Path, tmp_path: Path) -> None:
    example = tmp_path / "example"
    shutil.copytree(ROOT / "examples", example)
    directory = example / "directory.toml"
    out = _run([str(installed / "switchboard"), "provision", "check", str(directory)],
               cwd=tmp_path)
    assert out.strip().endswith(": valid")

    data = tmp_path / "data"
    data.mkdir()
    engine = EngineProcess(data, directory, ["--advertise", "127.0.0.1",
                                             "--digest-algorithms", "MD5"],
                           binary=str(installed / "switchboard")).start()
    try:
        assert '"parser": "c"' in engine.log()
        options = (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\n"
                   "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKwheel1;rport\r\n"
                   f"From: <sip:probe@{DOMAIN}>;tag=w1\r\nTo: <sip:{DOMAIN}>\r\n"
                   f"Call-ID: wheel-{uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\n"
                   "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        answers = udp_exchange(engine.sip, options)
        assert answers, "no answer to OPTIONS"
        answer = parse(answers[0])
        assert isinstance(answer, Response) and answer.status == 200

        # 201 (available, no schedule) registers from the port its phone (SIPp)
        # answers on; 102 calls it with digest auth; answered, then hung up.
        callee_port, caller_port = free_port(), free_port()
        register_udp(engine, "201", PASSWORDS["201"], callee_port, DOMAIN)
        callee = start_uas(tmp_path, "answer", callee_port, engine.target)
        result = run_uac(tmp_path, engine.target, caller="102", dialled="201", expect=200,
                         auth=("102", PASSWORDS["102"]), port=caller_port, domain=DOMAIN)
        assert result.ok, result.describe()
        assert callee.result().ok
        assert engine.metrics().get('switchboard_calls_total{outcome="answered"}') == 1.0
    finally:
        assert engine.stop() == 0, engine.log()
