"""benchmarks/compile_time.py: both modes compile the driver's step for abstract shapes, each in
its own process, and the scanned program no longer grows with depth."""

from __future__ import annotations

from tests.benchmarks.train_throughput_test import run_script


def test_scanned_program_does_not_grow_with_depth(tmp_path):
  rows = {}
  for layers in ("2", "6"):
    out, stdout = run_script("compile_time.py", "--layers", layers, tmp_path=tmp_path)
    assert "scan / loop total:" in stdout
    rows[layers] = {r["mode"]: r for r in out}
    assert rows[layers]["loop"]["params"] == rows[layers]["scan"]["params"]
    assert all(r["backend"] == "cpu" and r["compile_s"] > 0 for r in out)
  loop2, loop6 = rows["2"]["loop"]["hlo_lines"], rows["6"]["loop"]["hlo_lines"]
  scan2, scan6 = rows["2"]["scan"]["hlo_lines"], rows["6"]["scan"]["hlo_lines"]
  assert loop6 > 2 * loop2  # unrolled: every layer is its own code
  assert scan6 < 1.1 * scan2  # scanned: one layer body whatever the depth
