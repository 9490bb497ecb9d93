"""Several target realisations in one run: the layout of particles.nc, the
identity of realisation 0 with the run without realisations, a member rerun alone, the
sweep's tasks, the refusals, and the report's fits per realisation."""
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main
from analysis.run.experiment import resolve, run_particles
from analysis.sweep.realisations import realisation_config
from analysis.sweep.tasks import plan_tasks, task_label
from particles.build import build_problem
from particles.simulate import simulate

from .test_cli import write_toml

ROOT = Path(__file__).resolve().parents[2]


def config(R=3):
    cfg = tomllib.loads((ROOT / "examples" / "sigmoid_teacher.toml").read_text())
    cfg["problem"].update(d=3, nodes=150)
    cfg["problem"]["target"] = {"kind": "3spin"}
    cfg["dynamics"].update(t_end=0.4, save_times=[0.0, 0.2, 0.4], batch=6)
    cfg["particles"] = {"n": [5, 10], "seeds": 3, "root_seed": 4, "realisations": R,
                        "seeds_per_task": 2}
    return cfg


def load(path):
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    out, one = tmp / "out", tmp / "one"
    assert main(["run", str(write_toml(tmp / "c.toml", config())), "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["run", str(write_toml(tmp / "d.toml", config(1))), "--out", str(one),
                 "--no-progress"]) == 0
    return load(out / "particles.nc"), load(one / "particles.nc"), out


def test_layout_and_distinct_targets(runs):
    ds, _, _ = runs
    assert ds.sizes["realisation"] == 3 and list(ds["realisation"].values) == [0, 1, 2]
    for v in ("f_n", "loss", "y", "c", "f_target"):
        assert ds[v].dims[0] == "realisation", v
    assert "realisation" not in ds["x_weight"].dims  # the nodes are shared
    f = ds["f_target"].values
    assert not np.allclose(f[0], f[1]) and not np.allclose(f[1], f[2])
    assert "spawn_key" in ds.attrs["realisation_rule"]


def test_realisation_zero_is_the_run_without_realisations(runs):
    ds, one, _ = runs
    for v in ("f_n", "loss", "y", "c", "f_target"):
        np.testing.assert_array_equal(ds[v].isel(realisation=0).values, one[v].values)


def test_a_member_of_a_realisation_rerun_alone(runs):
    ds, _, _ = runs
    cfg = config()
    exp = resolve(cfg)
    r, i_n, s = 2, 1, 2
    problem = build_problem(realisation_config(cfg["problem"], r), cfg.get("init"))
    alone = simulate(problem, [10], [s], exp.dynamics, exp.save_times, root_seed=4,
                     n_index=[i_n], realisation=r)
    np.testing.assert_array_equal(alone["f_n"].values[0, 0],
                                  ds["f_n"].isel(realisation=r, n=i_n, seed=s).values)
    # the whole ensemble in one process (run_particles) stacks the same numbers
    whole = run_particles(exp)
    np.testing.assert_array_equal(whole["f_n"].values, ds["f_n"].values)


def test_tasks_per_realisation_keep_the_ids_without_realisations():
    cfg3, cfg1 = resolve(config()).config, resolve(config(1)).config
    t3 = plan_tasks(cfg3, ["particles"])
    assert len(t3) == 3 * 2 * 2  # realisations x n x blocks of 2 seeds
    assert task_label(t3[-1]) == "particles realisation 2 n=10 seeds 2"
    assert len({t["id"] for t in t3}) == len(t3)
    t1 = plan_tasks(cfg1, ["particles"])
    assert all("realisation" not in t for t in t1)


def _with_meanfield(cfg):
    cfg["meanfield"] = {"solvers": ["characteristics"]}


def _fixed_target(cfg):  # the circle's Fourier target: one function, no draws
    circle = tomllib.loads((ROOT / "examples" / "circle.toml").read_text())
    for s in ("problem", "init", "dynamics"):
        cfg[s] = circle[s]


@pytest.mark.parametrize("change, key", [(_with_meanfield, "[meanfield]"),
                                         (_fixed_target, "fixed function")])
def test_refusals_name_the_key(change, key, tmp_path, capsys):
    cfg = config()
    change(cfg)
    out = tmp_path / "out"
    assert main(["run", str(write_toml(tmp_path / "c.toml", cfg)), "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "particles.realisations = 3" in err and key in err and "Traceback" not in err
    assert not out.exists()


def test_report_fits_each_realisation_and_their_mean(runs):
    _, _, out = runs
    assert main(["report", str(out), "--no-figures"]) == 0
    a = load(out / "analysis.nc")
    assert list(a["fit"].values) == ["mean", "realisation 0", "realisation 1",
                                     "realisation 2"]
    m = a["final_loss_mean"]
    np.testing.assert_allclose(m.sel(fit="mean"), m.isel(fit=slice(1, None)).mean("fit"))
    assert "3 target realisations" in (out / "report.md").read_text()
