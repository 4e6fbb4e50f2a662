"""Units that carry tensors: written as safetensors before their JSON stamp, read back when reused; JSON-only units
keep their format (units written before tensors existed are still reused)."""

from functools import partial

import pytest
import torch

from diffmem import executor as ex
from diffmem.executor import Unit, run_units
from diffmem.io import read_json, write_json


def _task(i, state):
    state.append(i)
    return {"arrays": {"x": torch.arange(3.0) + i, "m": torch.tensor([i % 2 == 0])}, "v": i}


def _plan(root):
    return [Unit(root / "w" / f"{i:05d}.json", {"i": i}, partial(_task, i)) for i in range(3)]


def _tally():
    return {"computed": 0, "reused": 0, "recomputed": 0}


def test_arrays_are_written_before_the_stamp_and_read_back(tmp_path, monkeypatch):
    seen, calls = [], []
    real = ex.write_json

    def stamp(path, obj):  # the tensors are on disk when the stamp that marks the unit finished is written
        seen.append((path.name, path.with_suffix(".safetensors").exists()))
        return real(path, obj)

    monkeypatch.setattr(ex, "write_json", stamp)
    tally = _tally()
    got = run_units(_plan(tmp_path), tally, state=calls)
    assert calls == [0, 1, 2] and tally == {"computed": 3, "reused": 0, "recomputed": 0}
    assert seen == [(f"{i:05d}.json", True) for i in range(3)]
    assert [g["v"] for g in got] == [0, 1, 2] and torch.equal(got[1]["arrays"]["x"], torch.tensor([1.0, 2.0, 3.0]))
    assert read_json(tmp_path / "w" / "00001.json") == {"settings": {"i": 1}, "v": 1, "arrays": ["m", "x"]}

    tally = _tally()
    again = run_units(_plan(tmp_path), tally, state=calls)
    assert calls == [0, 1, 2] and tally == {"computed": 0, "reused": 3, "recomputed": 0}
    assert all(torch.equal(a["arrays"][k], b["arrays"][k]) for a, b in zip(got, again, strict=True) for k in "xm")
    assert again[2]["arrays"]["m"].dtype == torch.bool and again[0]["settings"] == {"i": 0}


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_stamp_without_its_arrays_is_recomputed(tmp_path, damage):
    calls = []
    run_units(_plan(tmp_path), _tally(), state=calls)
    arrays = tmp_path / "w" / "00001.safetensors"
    if damage == "delete":
        arrays.unlink()
    else:
        arrays.write_bytes(arrays.read_bytes()[:-4])
    tally = _tally()
    got = run_units(_plan(tmp_path), tally, state=calls)
    assert calls == [0, 1, 2, 1] and tally == {"computed": 1, "reused": 2, "recomputed": 1}
    assert torch.equal(got[1]["arrays"]["x"], torch.tensor([1.0, 2.0, 3.0])) and arrays.exists()


def test_json_only_units_keep_their_format(tmp_path):
    write_json(tmp_path / "0.json", {"settings": {"i": 0}, "v": 10})  # a unit from before, on disk
    tally = _tally()
    got = run_units([Unit(tmp_path / f"{i}.json", {"i": i}, lambda state, i=i: {"v": i}) for i in range(2)], tally)
    assert [g["v"] for g in got] == [10, 1] and tally == {"computed": 1, "reused": 1, "recomputed": 0}
    assert read_json(tmp_path / "1.json") == {"settings": {"i": 1}, "v": 1}
    assert not list(tmp_path.glob("*.safetensors"))


def test_bad_arrays_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="00000.json.*arrays"):
        run_units([Unit(tmp_path / "00000.json", {}, lambda state: {"arrays": [1, 2]})], _tally())
