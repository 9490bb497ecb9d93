"""mfpc run: outputs, atomic writes, no silent overwrite, bad input before any work."""
import copy
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main
from analysis.run.experiment import ConfigError, resolve, run_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "circle.toml"


def small_config():
    cfg = tomllib.loads(EXAMPLE.read_text())
    cfg["particles"] = {"n": [8, 16], "seeds": 3, "root_seed": 1}
    cfg["dynamics"].update(t_end=1.0, save_times=[0.0, 0.5, 1.0], dt=0.1)
    for s in list(cfg):
        if s not in ("problem", "init", "dynamics", "particles"):
            del cfg[s]
    return cfg


def write_toml(path, cfg):
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines = []

    def section(name, d):
        lines.append(f"[{name}]")
        subs = []
        for k, v in d.items():
            if isinstance(v, dict) and name == "problem" and k == "target":
                subs.append((f"{name}.{k}", v))
            else:
                lines.append(f"{k} = {val(v)}")
        for sname, sd in subs:
            section(sname, sd)

    # a top-level value that is not a table (a hostile config) precedes every table
    lines.extend(f"{k} = {val(v)}" for k, v in cfg.items() if not isinstance(v, dict))
    for name, d in cfg.items():
        if isinstance(d, dict):
            section(name, d)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_run_writes_particles_nc(tmp_path, capsys):
    cfgp = write_toml(tmp_path / "c.toml", small_config())
    out = tmp_path / "out"
    assert main(["run", str(cfgp), "--out", str(out), "--no-progress"]) == 0
    assert "particles.nc: written" in capsys.readouterr().out
    with xr.open_dataset(out / "particles.nc", engine="h5netcdf") as ds:
        assert ds["f_n"].dims == ("n", "seed", "t", "x")
        assert ds["loss"].dims == ("n", "seed", "t")
        assert ds["f_target"].dims == ("x",)
        assert ds.sizes == {**ds.sizes, "n": 2, "seed": 3, "t": 3, "x": 64}
        cfg = json.loads(ds.attrs["config"])
        assert cfg["particles"]["root_seed"] == 1 and ds.attrs["root_seed"] == 1
        assert "numpy" in json.loads(ds.attrs["versions"])
        np.testing.assert_allclose(ds["x"].values, 2 * np.pi * np.arange(64) / 64)
    # no temporary left (the manifest lists mfpc's files: analysis.store.runfolder)
    assert sorted(p.name for p in out.iterdir()) == [".mfpc-manifest.json", "particles.nc"]


def test_rerun_changes_nothing_and_says_so(tmp_path, capsys):
    cfgp = write_toml(tmp_path / "c.toml", small_config())
    out = tmp_path / "out"
    main(["run", str(cfgp), "--out", str(out), "--no-progress"])
    before = (out / "particles.nc").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(cfgp), "--out", str(out), "--no-progress"]) == 0
    assert "nothing done" in capsys.readouterr().out
    assert (out / "particles.nc").stat().st_mtime_ns == before
    # another config into the same folder is refused, --force overwrites
    cfg = small_config()
    cfg["particles"]["seeds"] = 2
    cfgp2 = write_toml(tmp_path / "c2.toml", cfg)
    assert main(["run", str(cfgp2), "--out", str(out), "--no-progress"]) == 2
    assert "different config" in capsys.readouterr().err
    assert (out / "particles.nc").stat().st_mtime_ns == before
    assert main(["run", str(cfgp2), "--out", str(out), "--no-progress", "--force"]) == 0
    with xr.open_dataset(out / "particles.nc", engine="h5netcdf") as ds:
        assert ds.sizes["seed"] == 2


def test_numerical_failure_cli_keeps_partial(tmp_path, capsys):
    cfg = small_config()
    cfg["dynamics"].update(dt=50.0, t_end=1e5, save_times=[0.0, 100.0, 1e5], integrator="euler")
    cfgp = write_toml(tmp_path / "c.toml", cfg)
    out = tmp_path / "out"
    assert main(["run", str(cfgp), "--out", str(out), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "lower dynamics.dt" in err and "t=" in err
    with xr.open_dataset(out / "particles.nc", engine="h5netcdf") as ds:
        assert ds.attrs["complete"] == 0
        assert np.isfinite(ds["loss"].isel(n=0, t=0).values).all()  # kept before the failure
        assert np.isnan(ds["loss"].isel(n=-1).values).all()  # never reached


BAD = [
    (lambda c: c["problem"].update(kapa=2.0), r"problem: unknown key\(s\) \['kapa'\]"),
    (lambda c: c["problem"].update(kind="torus"), r"problem.kind='torus' is not known"),
    (lambda c: c["problem"].update(kappa="two"), r"problem.kappa: expected a number"),
    (lambda c: c["problem"].update(quadrature=4), r"problem.quadrature=4 cannot resolve"),
    (lambda c: c["particles"].update(n=[8, 0]), r"particles.n\[1\]: must be >= 1"),
    (lambda c: c["particles"].update(seeds=2.5), r"particles.seeds: expected an integer"),
    (lambda c: c["dynamics"].update(dt=0.0), r"dynamics.dt: must be > 0"),
    (lambda c: c["dynamics"].update(dt=-1.0), r"dynamics.dt: must be > 0"),
    (lambda c: c["dynamics"].update(save_times=[0.0, 2.0]), r"must lie in \[0, t_end=1.0\]"),
    (lambda c: c["dynamics"].update(save_times=[-1.0, 0.5]), r"finite and >= 0"),
    (lambda c: c["dynamics"].update(save_times=[0.5, 0.2]), r"strictly increasing"),
    (lambda c: c["dynamics"].update(scheme="adam"), r"dynamics.scheme: 'adam' is not allowed"),
    (lambda c: c["dynamics"].update(scheme="sgd", integrator="euler"), r"needs dynamics.batch"),
    (lambda c: c["dynamics"].update(scheme="sgd", batch=4), r"use integrator = 'euler'"),
    (lambda c: c["dynamics"].update(scheme="langevin", integrator="euler"), r"needs dynamics.temperature"),
    (lambda c: c["dynamics"].update(scheme="sgd", integrator="euler", batch=0), r"batch: must be >= 1"),
    (lambda c: c["dynamics"].update(scheme="sgd", integrator="euler", batch={"P0": 1.0}),
     r"dynamics.batch: missing required key\(s\) \['alpha'\]"),
    (lambda c: c["dynamics"].update(scheme="sgd", integrator="euler",
                                    batch={"P0": 1.0, "alpha": 1.5}), r"batch.alpha: must be <= 1"),
    (lambda c: c["init"].update(c={"law": "cauchy"}), r"init.c.law: 'cauchy' is not allowed"),
    (lambda c: c["init"].update(c={"law": "uniform", "low": 1.0, "high": -1.0}), r"low < high"),
    (lambda c: c["init"].update(c={"law": "normal", "low": 1.0}), r"do not apply to law='normal'"),
    (lambda c: c.update(extra={"a": 1}), r"unknown section\(s\) \['extra'\]"),
    (lambda c: c.pop("dynamics"), r"missing section \[dynamics\]"),
    (lambda c: c["init"].update(file="missing.nc"), r"init.file='missing.nc': no such file"),
]


@pytest.mark.parametrize("mutate, message", BAD)
def test_bad_input_is_refused_before_work(tmp_path, mutate, message):
    cfg = copy.deepcopy(small_config())
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        resolve(cfg, base=tmp_path)


def test_init_file(tmp_path):
    from analysis.store.io import write_dataset

    rng = np.random.default_rng(0)
    y = rng.uniform(0, 2 * np.pi, (2, 5))
    c = rng.normal(size=(2, 5))
    write_dataset(xr.Dataset({"y": (("member", "particle"), y), "c": (("member", "particle"), c)}),
                  tmp_path / "init.nc")
    cfg = small_config()
    cfg["init"] = {"file": "init.nc"}
    del cfg["particles"]["n"], cfg["particles"]["seeds"]
    exp = resolve(cfg, base=tmp_path)
    assert exp.particles["n"] == [5] and exp.particles["seeds"] == 2
    cfgp = write_toml(tmp_path / "c.toml", cfg)
    run_config(cfgp, tmp_path / "out", progress=False)
    with xr.open_dataset(tmp_path / "out" / "particles.nc", engine="h5netcdf") as ds:
        np.testing.assert_allclose(ds["c"].isel(n=0, t=0).values, c)
    # shapes that do not fit
    write_dataset(xr.Dataset({"y": (("member", "particle", "y_dim"), np.stack([y, y], -1)),
                              "c": (("member", "particle"), c)}), tmp_path / "bad.nc")
    cfg["init"] = {"file": "bad.nc"}
    with pytest.raises(ConfigError, match="init.file: y has 2 coordinates per particle"):
        resolve(cfg, base=tmp_path)
    write_dataset(xr.Dataset({"y": (("member", "particle"), y),
                              "c": (("particle", "member"), c.T)}), tmp_path / "bad2.nc")
    cfg["init"] = {"file": "bad2.nc"}
    with pytest.raises(ConfigError, match=r"expected y\(member, particle"):
        resolve(cfg, base=tmp_path)
    cfg = small_config()
    cfg["init"] = {"file": "init.nc"}
    cfg["particles"]["n"] = [7]
    with pytest.raises(ConfigError, match=r"particles.n=\[7\] does not fit init.file"):
        resolve(cfg, base=tmp_path)
