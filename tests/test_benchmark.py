"""The step benchmark keeps working: both implementations at the tiny CPU setting."""

import pytest

pytest.importorskip("torch")


def test_bench_steps_tiny_runs_both_implementations(tmp_path):
    from benchmarks import bench_steps

    rows = bench_steps.main(
        ["--tiny", "--steps", "2", "--warmup", "1", "--torch_modes", "eager-fp32",
         "--jax_dtypes", "float32", "--out", str(tmp_path / "rows.json")]
    )  # fmt: skip
    got = {(r["impl"].split("+")[0], r["step"]) for r in rows}
    assert got == {(i, s) for i in ("torch", "stars_jax") for s in ("synthesis", "kd")}
    assert all(r["ms"] > 0 for r in rows)
    assert all(r["flops"] > 0 for r in rows if r["impl"] == "stars_jax")
    assert (tmp_path / "rows.json").exists()
