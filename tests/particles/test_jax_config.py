"""``[dynamics] backend`` and ``dtype``: checked, refused without jax (exit 2 naming the
install command), in the run identity (the device is not), ``mfpc run --backend``."""
import numpy as np
import pytest

import particles.jax as pj
from analysis.cli import main
from analysis.run.experiment import ConfigError, resolve
from analysis.store.runfolder import IDENTITY_IGNORED, run_id
from particles.dynamics import Dynamics
from tests.analysis.test_cli import small_config, write_toml


def _no_jax(monkeypatch):
    def fail():
        raise ImportError("No module named 'jax'")

    monkeypatch.setattr(pj, "_import_jax", fail)


def test_keys_checked():
    with pytest.raises(ValueError, match="backend = 'jax'"):
        Dynamics("gd", dt=0.1, dtype="float32")
    with pytest.raises(ValueError, match="'numpy' or 'jax'"):
        Dynamics("gd", dt=0.1, backend="torch")
    cfg = small_config()
    cfg["dynamics"]["dtype"] = "float16"
    with pytest.raises(ConfigError, match="dtype"):
        resolve(cfg)
    cfg["dynamics"]["dtype"] = "float32"  # numpy backend: refused
    with pytest.raises(ConfigError, match="backend = 'jax'"):
        resolve(cfg)


def test_refused_without_jax(monkeypatch, tmp_path):
    _no_jax(monkeypatch)
    cfg = small_config()
    cfg["dynamics"]["backend"] = "jax"
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[jax\]"'):
        resolve(cfg)
    path = write_toml(tmp_path / "c.toml", small_config())
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--backend", "jax",
                 "--no-progress"]) == 2
    assert not (tmp_path / "o" / "particles.nc").exists()
    # the numpy backend runs without jax
    assert resolve(small_config()).dynamics.backend == "numpy"


def test_identity():
    pytest.importorskip("jax")
    base = resolve(small_config())
    assert "backend" not in base.config["dynamics"]  # a numpy float64 run keeps its id
    ids = {run_id(base.config_json())}
    for keys in ({"backend": "jax"}, {"backend": "jax", "dtype": "float32"}):
        cfg = small_config()
        cfg["dynamics"].update(keys)
        exp = resolve(cfg)
        assert {k: exp.config["dynamics"][k] for k in keys} == keys
        ids.add(run_id(exp.config_json()))
    assert len(ids) == 3
    assert not {("dynamics", "backend"), ("dynamics", "dtype")} & set(IDENTITY_IGNORED)


def test_attrs_record_backend_device_dtype():
    from particles import simulate

    exp = resolve(small_config())
    ds = simulate(exp.problem, [4], 2, exp.dynamics, [0.0, 0.2], progress=False)
    assert (ds.attrs["backend"], ds.attrs["dtype"], ds.attrs["device"]) == (
        "numpy", "float64", "cpu (numpy)")


def test_what_the_jax_backend_does_not_run():
    pytest.importorskip("jax")
    cfg = small_config()
    cfg["dynamics"].update(backend="jax", form="kernel")
    with pytest.raises(ConfigError, match="interpolation energy \\(4.5\\) only"):
        resolve(cfg)


def test_mfpc_run_backend_jax(tmp_path):
    pytest.importorskip("jax")
    import xarray as xr

    cfg = small_config()
    cfg["particles"]["n"] = [8]
    path = write_toml(tmp_path / "c.toml", cfg)
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--backend", "jax",
                 "--no-progress"]) == 0
    with xr.open_dataset(tmp_path / "o" / "particles.nc", engine="h5netcdf") as ds:
        assert (ds.attrs["backend"], ds.attrs["dtype"]) == ("jax", "float64")
        assert '"backend": "jax"' in ds.attrs["config"]
        assert np.all(np.isfinite(ds["f_n"].values))


@pytest.mark.slow
def test_sgd_report_rows_pass_on_a_jax_run(tmp_path):
    """examples/circle_sgd.toml on the JAX backend: the SGD prediction rows of the report
    pass (the particles from JAX keys, the predictions from the numpy mean field)."""
    pytest.importorskip("jax")
    from pathlib import Path

    ex = Path(__file__).resolve().parents[2] / "examples" / "circle_sgd.toml"
    out = tmp_path / "out"
    assert main(["run", str(ex), "--out", str(out), "--backend", "jax", "--no-progress"]) == 0
    assert main(["report", str(out), "--no-figures"]) == 0
    rows = [line for line in (out / "report.md").read_text().splitlines()
            if line.startswith("| SGD: n·Var")]
    assert rows
    verdicts = [line.rstrip(" |").split("|")[-1].strip() for line in rows]
    # no row fails; a row whose interval is too wide for 48 seeds to decide is
    # INCONCLUSIVE: the numpy backend's run of this config has 2 of its 12 n·Var rows so
    # (n = 64 and 256 at t = 2), the JAX run measured 3 rows of its report so
    assert len(verdicts) == 12 and "FAIL" not in verdicts, rows
    assert verdicts.count("PASS") >= 9, rows


def test_one_thread_workers_set_xla_to_one_thread(monkeypatch):
    """A sweep worker (MFPC_THREADS=1) gets XLA's one-thread flags before JAX starts."""
    pytest.importorskip("jax")
    import os

    monkeypatch.setenv("MFPC_THREADS", "1")
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/nowhere")
    pj._import_jax()
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/nowhere " + pj.ONE_THREAD_XLA
    pj._import_jax()  # not twice
    assert os.environ["XLA_FLAGS"].count("intra_op_parallelism_threads") == 1
