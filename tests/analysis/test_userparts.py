"""Python parts named by a config (``python = "FILE.py:NAME"``), the run identity of what
runs (parts, Python and data files by hash), and closed forms matched on types.

Every refusal is checked as a user meets it: ``mfpc`` exits 2, the message names the file,
no traceback of the toolkit is printed and nothing is written.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main
from analysis.run.experiment import resolve, run_experiment
from analysis.store.runfolder import RunFolderError
from particles.build import build_problem
from particles.closed_forms import QUADRATURE_TOL, circle_quadrature_error, kernel_form
from particles.engine.config import ConfigError
from particles.kernels import CircleKernel, check_kernel
from particles.laws import CLaw, YUniformCircle
from particles.measures import CircleUniform
from particles.problem import KernelForm, Problem
from particles.targets import FourierTarget

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "user_kernel"
KERNEL = (EXAMPLE / "cos2.py").read_text()

RUN = """
[dynamics]
scheme = "gd"
dt = 0.1
t_end = 0.1
save_times = [0.0, 0.1]

[particles]
n = [4]
seeds = 2
"""
CONFIG = """
[problem.kernel]
python = "k.py:Cos2Kernel"
[problem.measure]
kind = "circle"
nodes = 16
[problem.target]
kind = "fourier"
cos = [0.0, 0.5]
""" + RUN


def _write(folder, kernel=KERNEL, config=CONFIG):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "k.py").write_text(kernel)
    (folder / "c.toml").write_text(config)
    return folder / "c.toml"


def _run(capsys, *args):
    rc = main(["run", *map(str, args), "--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _refused(tmp_path, capsys, kernel=KERNEL, config=CONFIG, says=()):
    cfg = _write(tmp_path / "cfg", kernel, config)
    out = tmp_path / "out"
    rc, _, err = _run(capsys, cfg, "--out", out)
    assert rc == 2, err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written
    for s in says:
        assert s in err, err
    return err


# -- hostile Python parts --------------------------------------------------------------
def test_a_missing_file_is_refused(tmp_path, capsys):
    _refused(tmp_path, capsys, config=CONFIG.replace("k.py:", "gone.py:"),
             says=("gone.py", "no such file"))


def test_a_missing_name_is_refused(tmp_path, capsys):
    _refused(tmp_path, capsys, config=CONFIG.replace("Cos2Kernel", "Nope"),
             says=("k.py", "'Nope'", "Cos2Kernel"))


def test_a_syntax_error_names_the_file_and_line(tmp_path, capsys):
    lines = KERNEL.splitlines()
    i = next(i for i, ln in enumerate(lines) if "def phi(self" in ln)
    lines[i] = lines[i].replace("):", ")")
    err = _refused(tmp_path, capsys, kernel="\n".join(lines) + "\n",
                   says=("SyntaxError",))
    assert f"k.py:{i + 1}" in err


def test_an_exception_while_built_names_the_file_and_line(tmp_path, capsys):
    kernel = KERNEL.replace("        self.scale = float(scale)",
                            "        raise RuntimeError('no scale today')")
    line = kernel.splitlines().index("        raise RuntimeError('no scale today')") + 1
    err = _refused(tmp_path, capsys, kernel=kernel, says=("no scale today", "RuntimeError"))
    assert f"k.py:{line}" in err


def test_an_unknown_key_names_the_parameters(tmp_path, capsys):
    _refused(tmp_path, capsys, config=CONFIG.replace('Cos2Kernel"', 'Cos2Kernel"\nwidth = 2'),
             says=("['width']", "Cos2Kernel", "scale"))


def test_python_and_kind_exclude_each_other(tmp_path, capsys):
    _refused(tmp_path, capsys, config=CONFIG.replace('Cos2Kernel"', 'Cos2Kernel"\nkind = "circle"'),
             says=("problem.kernel", "either kind or python"))


def test_a_part_without_params_is_refused(tmp_path, capsys):
    kernel = KERNEL.replace("    def params(self):", "    def _params(self):")
    _refused(tmp_path, capsys, kernel=kernel, says=("params()", "k.py"))


@pytest.mark.parametrize("bad, says", [
    ("self._g(self._s(x, y))[0].T", "shape"),
    ("self._g(self._s(x, y))[0] * np.nan", "non-finite"),
    ("self._g(self._s(x, y))[0].tolist()", "a list, not a numpy array"),
])
def test_a_phi_that_answers_wrongly_is_refused_before_any_work(tmp_path, capsys, bad, says):
    kernel = KERNEL.replace("return self._g(self._s(x, y))[0]", f"return {bad}")
    assert kernel != KERNEL
    _refused(tmp_path, capsys, kernel=kernel, says=("k.py", "phi(x", says))


PARTS = """
import numpy as np
class M:
    name = "mine"
    domain = "circle"
    def __init__(self, q):
        self.nodes = np.linspace(0, 2 * np.pi, q, endpoint=False)[:, None]
        self.weights = np.full(q, 1.0 / q)
        self.d = 1
    def params(self):
        return {"q": len(self.nodes)}
class T:
    name = "mine"
    def params(self):
        return {}
    def __call__(self, x):
        return np.sin(x[..., 0])
"""


@pytest.mark.parametrize("part, bad, says", [
    ("measure", ("self.weights = np.full(q, 1.0 / q)", "self.weights = np.full(q, np.nan)"),
     "the measure's weights"),
    ("target", ("return np.sin(x[..., 0])", "return np.sin(x)"), "f(nodes)"),
])
def test_a_measure_or_target_that_answers_wrongly_is_refused(tmp_path, capsys, part, bad,
                                                             says):
    config = CONFIG.replace('[problem.measure]\nkind = "circle"\nnodes = 16',
                            '[problem.measure]\npython = "p.py:M"\nq = 16') \
        if part == "measure" else \
        CONFIG.replace('kind = "fourier"\ncos = [0.0, 0.5]', 'python = "p.py:T"')
    assert config != CONFIG
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "p.py").write_text(PARTS.replace(*bad))
    _refused(tmp_path, capsys, config=config, says=("p.py", says))
    (tmp_path / "cfg" / "p.py").write_text(PARTS)  # the same without the fault runs
    rc, _, err = _run(capsys, tmp_path / "cfg" / "c.toml", "--out", tmp_path / "out")
    assert rc == 0, err


def test_the_file_is_imported_by_path_not_from_sys_path(tmp_path):
    """Two files of one name in two folders are two parts (the module name is the hash)."""
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b", KERNEL.replace("(1 + c) ** 2 / 4", "(1 + c) ** 2 / 2"))
    pa = build_problem({"kernel": {"python": "k.py:Cos2Kernel"},
                        "measure": {"kind": "circle", "nodes": 8},
                        "target": {"kind": "fourier", "cos": [1.0]}}, base=a.parent)
    pb = build_problem({"kernel": {"python": "k.py:Cos2Kernel"},
                        "measure": {"kind": "circle", "nodes": 8},
                        "target": {"kind": "fourier", "cos": [1.0]}}, base=b.parent)
    x, y = np.zeros((1, 1)), np.zeros((1, 1))
    assert pb.kernel.phi(x, y)[0, 0] == 2 * pa.kernel.phi(x, y)[0, 0]
    assert type(pa.kernel).__module__ != type(pb.kernel).__module__


def test_reserved_arguments_reach_the_part_that_accepts_them(tmp_path):
    (tmp_path / "t.py").write_text(
        "import numpy as np\n"
        "class T:\n"
        "    name = 'mine'\n"
        "    def __init__(self, amp, measure, d, rng):\n"
        "        self.amp, self.d, self.shift = amp, d, rng.uniform()\n"
        "        self.q = len(measure.nodes)\n"
        "    def params(self):\n"
        "        return {'amp': self.amp}\n"
        "    def __call__(self, x):\n"
        "        return self.amp * np.cos(x[..., 0] + self.shift)\n")
    cfg = {"kernel": {"kind": "circle", "kappa": 1.0}, "measure": {"kind": "circle", "nodes": 16},
           "target": {"python": "t.py:T", "amp": 0.5}, "seed": 3}
    p1, p2 = build_problem(cfg, base=tmp_path), build_problem(cfg, base=tmp_path)
    assert p1.target.q == 16 and p1.target.d == 1
    assert p1.target.shift == p2.target.shift  # the generator is seeded by [problem] seed
    assert p1.target.shift != build_problem({**cfg, "seed": 4}, base=tmp_path).target.shift


def test_a_whole_problem_from_python(tmp_path, capsys):
    (tmp_path / "p.py").write_text(
        "from particles.presets import circle_problem\n"
        "def make(kappa=2.0):\n"
        "    return circle_problem(kappa, 16, cos=[0.0, 0.5])\n")
    (tmp_path / "c.toml").write_text('[problem]\npython = "p.py:make"\nkappa = 1.5\n' + RUN)
    rc, out, err = _run(capsys, tmp_path / "c.toml", "--out", tmp_path / "o")
    assert rc == 0, err
    cfg = json.loads(xr.open_dataset(tmp_path / "o" / "particles.nc",
                                     engine="h5netcdf").attrs["config"])
    assert cfg["problem_identity"]["kernel"]["params"] == {"kappa": 1.5}
    assert cfg["files"]["problem.python"]["path"] == str((tmp_path / "p.py").resolve())


# -- identity: what runs -----------------------------------------------------------------
def test_changing_the_file_refuses_the_rerun_and_force_recomputes(tmp_path, capsys):
    cfg = _write(tmp_path / "cfg")
    out = tmp_path / "out"
    assert _run(capsys, cfg, "--out", out)[0] == 0
    rc, text, _ = _run(capsys, cfg, "--out", out)
    assert rc == 0 and "up to date" in text
    (tmp_path / "cfg" / "k.py").write_text(KERNEL + "\n# edited\n")
    rc, _, err = _run(capsys, cfg, "--out", out)
    assert rc == 2 and "problem_identity.kernel.source_sha256" in err and "Traceback" not in err
    assert _run(capsys, cfg, "--out", out, "--force")[0] == 0
    attrs = xr.open_dataset(out / "particles.nc", engine="h5netcdf").attrs
    rec = json.loads(attrs["config"])["files"]["problem.kernel.python"]
    assert rec["sha256"] == __import__("hashlib").sha256(
        (tmp_path / "cfg" / "k.py").read_bytes()).hexdigest()


@pytest.mark.parametrize("how", ["gone", "changed"])
def test_the_report_marks_what_it_cannot_check_when_the_file_is_gone(tmp_path, capsys, how):
    cfg = _write(tmp_path / "cfg")
    out = tmp_path / "out"
    assert _run(capsys, cfg, "--out", out)[0] == 0
    src = tmp_path / "cfg" / "k.py"
    if how == "gone":
        src.unlink()
    else:
        src.write_text(KERNEL.replace("/ 4\n", "/ 3\n", 1))
    assert main(["report", str(out), "--no-figures"]) == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert "problem.kernel.python" in report
    assert ("is gone" if how == "gone" else "changed since the run (SHA-256") in report
    assert "M[ρ] ⪰ 0 and identity (2.39)" in report  # the M-kernel rows: n.a.


def _circle(kappa=2.0, cos=(0.0, 0.5)):
    return Problem(CircleKernel(kappa), CircleUniform(16), FourierTarget(cos), YUniformCircle(),
                   CLaw("normal"))


@pytest.mark.parametrize("change", ["kappa", "target"])
def test_a_python_built_problem_changed_between_runs_is_refused(tmp_path, change):
    cfg = {"problem": {"kind": "mine"}, **__import__("tomllib").loads(RUN)}
    run_experiment(resolve(cfg, problem=_circle()), tmp_path, progress=False)
    other = _circle(3.0) if change == "kappa" else _circle(cos=(0.0, 0.7))
    with pytest.raises(RunFolderError, match="kappa" if change == "kappa" else "target"):
        run_experiment(resolve(cfg, problem=other), tmp_path, progress=False)
    status = run_experiment(resolve(cfg, problem=_circle()), tmp_path, progress=False)
    assert all(s == "up to date" for _, s in status.values())


def _data_files(folder, scale=1.0):
    folder.mkdir(parents=True, exist_ok=True)
    x = np.linspace(-1, 1, 6)
    xr.Dataset({"x": (("x", "x_dim"), x[:, None]), "weight": ("x", scale * np.full(6, 1 / 6))}
               ).to_netcdf(folder / "m.nc", engine="h5netcdf")
    xr.Dataset({"f": ("x", scale * np.sin(x))}).to_netcdf(folder / "t.nc", engine="h5netcdf")
    rng = np.random.default_rng(0)
    xr.Dataset({"y": (("member", "particle"), scale * rng.standard_normal((2, 4))),
                "c": (("member", "particle"), rng.standard_normal((2, 4)))}
               ).to_netcdf(folder / "i.nc", engine="h5netcdf")


FILES = """
[problem.kernel]
kind = "gaussian"
sigma = 0.5
[problem.measure]
kind = "file"
path = "m.nc"
[problem.target]
kind = "file"
path = "t.nc"
[init]
file = "i.nc"
[dynamics]
scheme = "gd"
dt = 0.1
t_end = 0.1
save_times = [0.0, 0.1]
[particles]
"""


@pytest.mark.parametrize("changed", ["m.nc", "t.nc", "i.nc"])
def test_a_changed_data_file_is_refused_from_any_folder(tmp_path, capsys, monkeypatch,
                                                        changed):
    """Paths are relative to the config file: the command runs from two other folders."""
    cfgdir = tmp_path / "cfg"
    _data_files(cfgdir)
    (cfgdir / "c.toml").write_text(FILES)
    out = tmp_path / "out"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _run(capsys, "cfg/c.toml", "--out", out)[0] == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert "up to date" in _run(capsys, "../cfg/c.toml", "--out", out)[1]
    spare = tmp_path / "spare"
    _data_files(spare, scale=2.0)
    shutil.copy(spare / changed, cfgdir / changed)
    rc, _, err = _run(capsys, "../cfg/c.toml", "--out", out)
    role = {"m.nc": "problem.measure.path", "t.nc": "problem.target.path",
            "i.nc": "init.file"}[changed]
    assert rc == 2 and f"problem_identity.files.{role}" in err, err


def test_a_resume_after_a_kill_with_a_changed_file_is_refused(tmp_path, capsys):
    """A killed sweep leaves DIR/tasks with its manifest: a changed file refuses it."""
    from analysis.run.inputs import load_config
    from analysis.sweep.driver import _start
    from analysis.sweep.tasks import plan_tasks

    cfgdir = tmp_path / "cfg"
    _data_files(cfgdir)
    (cfgdir / "c.toml").write_text(FILES)
    out = tmp_path / "out"
    out.mkdir()
    exp = resolve(load_config(cfgdir / "c.toml"), base=cfgdir)
    sections = ["particles"]
    _start(out, plan_tasks(exp.config, sections), sections, exp.config_json())  # a killed run
    _data_files(tmp_path / "spare", scale=2.0)
    shutil.copy(tmp_path / "spare" / "m.nc", cfgdir / "m.nc")
    rc, _, err = _run(capsys, cfgdir / "c.toml", "--out", out)
    assert rc == 2 and "holds the tasks of a sweep of a different config" in err
    assert "problem_identity.files.problem.measure.path" in err


# -- sweeps: the file travels with the task ---------------------------------------------
def test_a_remote_worker_builds_from_the_shipped_bytes_and_checks_the_hash(tmp_path):
    from particles import userparts

    src = KERNEL.replace("(1 + c) ** 2 / 4", "(1 + c) ** 2 / 3").encode()
    gone = tmp_path / "remote" / "k.py"  # not on this machine
    sha = userparts.sha256_bytes(src)
    with userparts.shipping({str(gone): {"sha256": sha, "source": src}}):
        cls, info = userparts.load(f"{gone}:Cos2Kernel", tmp_path, "problem.kernel.python")
    assert info["sha256"] == sha and cls().phi(np.zeros((1, 1)), np.zeros((1, 1)))[0, 0] == 4 / 3
    here = _write(tmp_path / "here").parent / "k.py"
    with userparts.shipping({str(here): {"sha256": "0" * 64}}):
        with pytest.raises(ConfigError, match="changed since the run started"):
            userparts.load(f"{here}:Cos2Kernel", tmp_path, "problem.kernel.python")


def test_a_worker_whose_problem_is_not_the_runs_refuses(tmp_path):
    from analysis.run.experiment import run_task
    from analysis.run.inputs import load_config

    cfg = _write(tmp_path / "cfg")
    spec = {"config": load_config(cfg), "base": str(cfg.parent), "files": {},
            "run_id": "0" * 16, "identity": {}}
    with pytest.raises(ConfigError, match="not the run's"):
        run_task(spec, {"section": "particles", "id": "x", "n": 4, "i_n": 0, "seeds": [0]},
                 str(tmp_path), {"progress": False})


# -- closed forms by type ---------------------------------------------------------------
class _Impostor(CircleKernel.__bases__[0]):
    """A user's kernel that calls itself "circle" and has a kappa: not the built-in one."""

    name, N, d, y_domain = "circle", 1, 1, "circle"

    def __init__(self, kappa):
        self.kappa = kappa

    def phi(self, x, y):
        return (1 + np.cos(x[..., None, :, 0] - y[..., :, None, 0])) ** 2 / 4


def test_a_user_kernel_named_circle_gets_no_closed_form():
    form, reason = kernel_form(_Impostor(2.0), CircleUniform(16), FourierTarget([0.0, 1.0]))
    assert form is None and "_Impostor" in reason


def test_a_user_kernel_that_provides_F_and_K_gets_its_own():
    mine = KernelForm(F=lambda y: 0 * y[..., 0], grad_F=lambda y: 0 * y,
                      K=lambda y, y2: 0 * y[..., 0] @ y2[..., 0].swapaxes(-1, -2),
                      grad_K=None, description="mine")

    class Own(_Impostor):
        def kernel_form(self, measure, target, energy):
            return mine

    assert kernel_form(Own(2.0), CircleUniform(16), FourierTarget([1.0])) == (mine, "mine")
    assert kernel_form(CircleKernel(2.0), CircleUniform(16),
                       FourierTarget([1.0]))[0] is not None  # the built-in keeps its own


# -- quadrature refusals that matter ----------------------------------------------------
def _circle_cfg(kappa, Q):
    return {"kind": "circle", "kappa": kappa, "quadrature": Q, "target": {"cos": [0.0, 0.5]}}


def test_aliasing_far_below_what_the_checks_resolve_runs_with_a_warning(caplog):
    eF, eK = circle_quadrature_error(2.0, 16, [0.0, 0.5])
    assert 1e-10 < eK < 1e-8  # the config that ran before: ~1e-9 in K
    with caplog.at_level("WARNING", logger="particles"):
        build_problem(_circle_cfg(2, 16))
    [msg] = [r.getMessage() for r in caplog.records if "trapezoid" in r.getMessage()]
    assert f"K {eK:.1e}" in msg and "\n" not in msg


def test_aliasing_that_matters_is_refused_with_a_hint_that_works():
    eF, eK = circle_quadrature_error(8.0, 16, [0.0, 0.5])
    assert 1e-4 < max(eF, eK) < 1e-2 and max(eF, eK) > QUADRATURE_TOL
    with pytest.raises(ConfigError) as e:
        build_problem(_circle_cfg(8, 16))
    msg = str(e.value)
    assert f"K {eK:.1e}" in msg
    q = int(re.search(r"problem\.quadrature >= (\d+)", msg).group(1))
    kappa = float(re.search(r"problem\.kappa <= ([0-9.e+-]+)", msg).group(1))
    build_problem(_circle_cfg(8, q))  # each hint works
    build_problem(_circle_cfg(kappa, 16))
    with pytest.raises(ConfigError):  # and is the least that does
        build_problem(_circle_cfg(8, q - 1))


def test_check_kernel_passes_the_example_and_fails_a_wrong_derivative():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cos2_example", EXAMPLE / "cos2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    errs = check_kernel(mod.Cos2Kernel())
    assert set(errs) >= {"phi_grad[1]", "grad_x", "phi_hessian[2]"}

    class Wrong(mod.Cos2Kernel):
        def phi_hessian(self, x, y):
            p, dp, hp = super().phi_hessian(x, y)
            return p, dp, hp * (1 + 1e-4)

    with pytest.raises(AssertionError, match="phi_hessian"):
        check_kernel(Wrong())


def test_an_exception_during_the_run_names_the_file_and_line(tmp_path, capsys):
    """The user's code raises only once the run calls it on more units than the probe's:
    the failed tasks are reported with the file and line (exit 3: computed before the
    failure is kept), never a toolkit traceback."""
    old = "        g, dy, _ = self._g(self._s(x, y))\n        return g, dy[..., None]"
    new = ("        if y.shape[-2] > 3:\n"
           "            raise RuntimeError('too many units for me')\n" + old)
    assert old in KERNEL
    kernel = KERNEL.replace(old, new)
    line = kernel.splitlines().index("            raise RuntimeError('too many units for me')") + 1
    cfg = _write(tmp_path / "cfg", kernel)
    rc, _, err = _run(capsys, cfg, "--out", tmp_path / "out", "--retries", "0")
    assert rc == 3, err
    assert f"k.py:{line}: your Python part raised RuntimeError: too many units" in err
    assert "Traceback" not in err
