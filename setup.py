"""Build hook for the optional C quick paths of the SIP parser.

Everything else is declared in pyproject.toml. ``optional=True``: without a C
compiler the install still succeeds and the engine runs on the pure-Python
parser (tests/test_speedups.py fails in CI then, so CI always has it).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("engine.sip.message._speedups", ["engine/sip/message/_speedups.c"],
                             optional=True, extra_compile_args=["-O2", "-Wall", "-Wextra",
                                                                "-Wno-unused-parameter"])])
