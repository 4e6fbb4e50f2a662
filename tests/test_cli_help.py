"""``diffmem COMMAND --help`` imports no torch: the parsers are built from light modules, and the constants they
show (:mod:`diffmem.cli._names`) stay equal to the registries and presets they are copied from."""

import subprocess
import sys
from dataclasses import asdict

import pytest

from diffmem.cli.main import COMMANDS
from diffmem.cli.options import command_options

# every command, the sub-commands of similarity and one value of each positional choice
HELPS = [[], *([c] for c in COMMANDS), ["version"], ["analyze", "kim"], ["analyze", "kim-theory"],
         *(["theory", k] for k in ("loss-gap", "scores", "sweep", "teaser")),
         *(["similarity", k] for k in ("memorization", "duplicates", "classifier"))]

PROBE = """import sys
from diffmem.cli.main import main
try:
    main({argv!r})
except SystemExit as err:
    code = err.code
print(code, 'torch' in sys.modules)
"""


def test_every_command_and_sub_command_is_probed():
    probed = {" ".join(h) for h in HELPS}
    assert set(command_options()) <= probed | {"similarity"}


@pytest.mark.parametrize("argv", HELPS, ids=lambda a: "-".join(a) or "diffmem")
def test_help_imports_no_torch(argv):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=[*argv, "--help"])], capture_output=True,
                         text=True, check=True)
    assert "usage: diffmem" in out.stdout
    assert out.stdout.splitlines()[-1] == "0 False"


def test_help_constants_equal_their_sources():
    from diffmem.cli import _names
    from diffmem.mitigations.prune_table import FULL, QUICK, VARIANTS
    from diffmem.runners.demo import SECTIONS

    assert _names.DEMO_SECTIONS == SECTIONS
    assert _names.PRUNE_FULL == asdict(FULL) and _names.PRUNE_QUICK == asdict(QUICK)
    assert _names.PRUNE_VARIANTS == tuple(VARIANTS)
