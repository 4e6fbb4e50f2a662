"""``--grid`` values take the type of the method's knob, so a typed setting is the grid's setting."""

import pytest

from diffmem.cli.mitigate import grid_arg, knob_values
from diffmem.mitigations.harness import settings_of


def test_grid_values_take_the_knob_type():
    name, values = grid_arg("somepalli-rt:1,8")
    assert knob_values(name, values) == (1, 8) and all(type(v) is int for v in knob_values(name, values))
    # typed "999" is the grid's τ = 999.0: same label as the published sweep
    assert [m.setting for m in settings_of("jain-stp", knob_values(*grid_arg("jain-stp:999")))][1:] == ["tau=999.0"]
    assert knob_values(*grid_arg("jain-dtp:two_decreases")) == ("two_decreases",)
    with pytest.raises(ValueError, match="not a valid n_tokens"):
        knob_values("somepalli-rt", (1.5,))
