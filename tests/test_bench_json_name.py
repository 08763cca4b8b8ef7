"""The bench suite's default JSON never replaces an earlier run's (bench/conftest.py unused_path)."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_default_bench_json_takes_a_free_name(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))          # conftest imports harness
    spec = importlib.util.spec_from_file_location("bench_conftest", BENCH / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    path = tmp_path / "cpu-2026-12-01.json"
    assert conftest.unused_path(path) == path
    path.write_text("{}")
    (tmp_path / "cpu-2026-12-01-2.json").write_text("{}")
    assert conftest.unused_path(path) == tmp_path / "cpu-2026-12-01-3.json"
    assert path.read_text() == "{}"
