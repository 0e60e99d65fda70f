"""maskcontrast.data.paths: where the shared data is found."""

from maskcontrast.data.paths import data_root


def test_data_root_is_absolute_however_it_is_spelled(tmp_path, monkeypatch):
    (tmp_path / "shared").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MASKCONTRAST_DATA", "shared")
    relative = data_root()
    monkeypatch.setenv("MASKCONTRAST_DATA", str(tmp_path / "shared"))
    assert relative is not None and relative.is_absolute()
    assert relative == data_root()
    monkeypatch.setenv("MASKCONTRAST_DATA", "missing")
    assert data_root() is None
    monkeypatch.delenv("MASKCONTRAST_DATA")
    assert data_root() is None
