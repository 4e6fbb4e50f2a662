"""``diffmem similarity``: the memorization and duplicates commands on small saved tensors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from diffmem.cli.main import main
from diffmem.similarity.criteria import memorization_ratio


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(0)
    refs = torch.randn(50, 1, 4, 4, generator=g)
    refs[40:45] = refs[3].clone()  # image 3 appears 6 times
    samples = torch.cat([refs[:10] + 1e-3 * torch.randn(10, 1, 4, 4, generator=g),
                         torch.randn(10, 1, 4, 4, generator=g)])
    save_file({"train": refs}, str(tmp_path / "refs.safetensors"))
    save_file({"x": samples, "y": samples[:2].clone()}, str(tmp_path / "gen.safetensors"))
    return tmp_path, samples, refs


def test_memorization_command_reports_the_library_value(files, capsys):
    path, samples, refs = files
    rc = main(["similarity", "memorization", "--samples", str(path / "gen.safetensors"), "--samples-key", "x",
               "--refs", str(path / "refs.safetensors"), "--k", "5", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["memorization_ratio"] == memorization_ratio(samples, refs)
    assert out["memorization_ratio"] >= 0.5 and out["n_refs"] == 50 and out["dedup"] is True


def test_duplicates_command(files, capsys):
    path, _, _ = files
    assert main(["similarity", "duplicates", "--refs", str(path / "refs.safetensors"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["largest_group"] == 6 and out["largest_groups"][0] == [3, 40, 41, 42, 43, 44]


def test_ambiguous_file_is_a_clear_error(files, capsys):
    path, _, _ = files
    rc = main(["similarity", "memorization", "--samples", str(path / "gen.safetensors"),
               "--refs", str(path / "refs.safetensors")])
    assert rc == 2 and "choose one with --key" in capsys.readouterr().err
