"""Light commands load only what they use (issue 26): the modules a command imported, read from ``sys.modules`` of a
fresh interpreter (not the time, which depends on the machine's load)."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "numpy", "av")

_PROBE = """
import contextlib, io, json, sys
from deepforcing.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        code = main(sys.argv[1:])
    except SystemExit as stop:
        code = stop.code
print(json.dumps({"code": code, "printed": len(out.getvalue()), "modules": sorted(sys.modules)}))
"""


def imported(*argv: str) -> tuple[set[str], int, int]:
    """(top-level packages imported, exit code, characters printed) of ``deepforcing ARGV`` in a fresh process."""
    run = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    return {name.split(".")[0] for name in report["modules"]}, report["code"], report["printed"]


PLAN_BANNED = ("diffusers", "transformers", "av")


@pytest.mark.parametrize("argv, banned, needed", [
    (("--help",), HEAVY, ()),
    (("presets",), HEAVY, ()),
    (("plan", "--policy", "deep-forcing", "--chunks", "12"), PLAN_BANNED, ("torch",)),  # the cache runs on torch
    (("plan", "--help"), PLAN_BANNED, ()),
])
def test_light_commands_import_no_heavy_module(argv, banned, needed):
    modules, code, printed = imported(*argv)
    assert code == 0 and printed > 100  # the command ran and printed its output
    assert "deepforcing" in modules and set(needed) <= modules  # the probe does see what a command imports
    assert not modules & set(banned), f"deepforcing {' '.join(argv)} imported {sorted(modules & set(banned))}"
