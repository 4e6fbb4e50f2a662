"""The diffmem home: a path that is only named (``train --dry-run``) leaves nothing behind."""

import json

from diffmem.cli.main import main
from diffmem.home import diffmem_home


def test_naming_a_home_path_creates_nothing_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    named = diffmem_home("worlds", "x", create=False)
    assert named == tmp_path / "home" / "worlds" / "x" and not (tmp_path / "home").exists()
    assert diffmem_home("worlds", "x").is_dir()


def test_train_dry_run_on_a_folder_writes_nothing(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    data = tmp_path / "images"
    data.mkdir()
    for i in range(30):
        Image.new("L", (8, 8), color=8 * i).save(data / f"{i:03d}.png")
    assert main(["train", str(data), "--dry-run", "--json", "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["world"]["data"] == str(data) and "custom-" in printed["out"]
    assert not (tmp_path / "home").exists()
