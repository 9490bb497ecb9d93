"""Problems composed from parts: the config tables, the y laws' solver methods, the
measures and targets that refuse what they cannot do, and the house rules (every module
imports alone; no registry at import)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from particles.engine.config import CapabilityError, ConfigError
from particles.laws import BOX_MARGIN, YNormal, YUniformBox, YUniformCircle
from particles.measures import FileMeasure, Lebesgue
from particles.build import build_problem
from particles.targets import FileTarget

ROOT = Path(__file__).resolve().parents[2]

LINE = {
    "kernel": {"kind": "gaussian", "sigma": 0.7071067811865476, "normalised": True},
    "measure": {"kind": "lebesgue", "low": [-6.0], "high": [6.0], "nodes": 241},
    "target": {"kind": "gaussian_mixture",
               "weights": [0.3333333333333333, -0.6666666666666666, 0.3333333333333333],
               "centres": [[-2.0], [0.0], [2.0]],
               "sigmas": [0.7071067811865476, 1.0, 0.7071067811865476]},
}
INIT = {"y": {"law": "uniform", "low": [-2.0], "high": [2.0]},
        "c": {"law": "normal", "mean": 0.0, "std": 1.0}}


def _copy(d):
    return {k: (_copy(v) if isinstance(v, dict) else v) for k, v in d.items()}


def test_the_issue_schema_builds_the_gaussian_line():
    p = build_problem(_copy(LINE), _copy(INIT))
    assert (p.kernel.name, p.measure.name, p.target.name) == (
        "gaussian", "lebesgue", "gaussian_mixture")
    assert isinstance(p.y_law, YUniformBox) and p.N == 1 and p.x.shape == (241, 1)
    caps = p.capabilities()
    assert "kernel_form" in caps and "hessian_y" in caps
    assert "sample" not in caps and "fft" not in caps  # lebesgue cannot be sampled
    assert p.missing("kernel_form") == ""
    assert "'lebesgue'" in p.missing("sample")
    with pytest.raises(CapabilityError, match="'sample'"):
        p.require("sample", "SGD")
    with pytest.raises(CapabilityError, match="'sample'"):
        p.measure.sample(np.random.default_rng(0), 3)


def test_the_target_is_phi_plus_a_smoothed_phi():
    """Two components are φ itself (σ_k = σ), the middle one φ convolved with N(0, 1/2):
    f is exactly f_n of three units, so the kernel form at those units has zero loss."""
    p = build_problem(_copy(LINE), _copy(INIT))
    y = np.array([[[-2.0], [2.0]]])
    direct = p.kernel.phi(p.x, y[0]).T @ np.array([1 / 3, 1 / 3])
    mid = p.target.w[1] * stats.norm.pdf(p.x[:, 0], 0.0, 1.0)
    np.testing.assert_allclose(direct + mid, p.f_x, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("where, bad, match", [
    ("kernel", {"kind": ["gaussian"]}, r"problem\.kernel\.kind: expected a name"),
    ("measure", {"kind": {"a": 1}}, r"problem\.measure\.kind: expected a name"),
    ("target", {"kind": 3}, r"problem\.target\.kind: expected a name"),
    ("kernel", {"kind": "gaussian", "sigma": 1.0, "kappa": 2.0},
     r"problem\.kernel: key\(s\) \['kappa'\] do not apply to kind='gaussian'"),
    ("measure", {"kind": "circle", "nodes": 8, "low": [0.0]},
     r"problem\.measure: key\(s\) \['low'\] do not apply"),
    ("kernel", {"kind": "torus"}, r"problem\.kernel\.kind: 'torus' is not allowed"),
    ("kernel", {"kind": "gaussian", "sigma": "wide"}, r"problem\.kernel\.sigma: expected a number"),
    ("kernel", {"kind": "gaussian"}, r"problem\.kernel: missing required key\(s\) \['sigma'\]"),
    ("target", {"kind": "gaussian_mixture", "weights": [1.0], "centres": [[0.0, 1.0]],
                "sigmas": [1.0]}, r"every centre needs d=1"),
])
def test_bad_parts_are_config_errors_naming_the_key(where, bad, match):
    cfg = _copy(LINE)
    cfg[where] = bad
    with pytest.raises(ConfigError, match=match):
        build_problem(cfg, _copy(INIT))


@pytest.mark.parametrize("kind", [["circle"], {"a": 1}, 2])
def test_preset_kind_must_be_a_name(kind):
    with pytest.raises(ConfigError, match=r"problem\.kind: expected a name"):
        build_problem({"kind": kind, "kappa": 2.0}, {})


@pytest.mark.parametrize("y, match", [
    ({"law": "uniform"}, r"needs low = \[\.\.\] and high"),
    ({"law": "uniform", "low": [0.0, 1.0], "high": [1.0, 2.0]}, r"need 1 numbers"),
    ({"law": "uniform", "low": [1.0], "high": [0.0]}, r"low < high"),
    ({"law": "uniform_sphere"}, r"does not fit kernel 'gaussian'"),
    ({"law": "normal", "low": [0.0]}, r"key\(s\) \['low'\] do not apply to law='normal'"),
])
def test_bad_y_laws(y, match):
    with pytest.raises(ConfigError, match=match):
        build_problem(_copy(LINE), {"y": y})


def test_form_kernel_is_refused_with_the_reason():
    cfg = _copy(LINE)
    cfg["kernel"] = {"kind": "tanh"}
    p = build_problem(cfg, {"y": {"law": "normal"}})
    assert p.kernel_form is None and "kernel_form" not in p.capabilities()
    assert "no closed (F, K) form for kernel 'tanh'" in p.missing("kernel_form")
    y, c = np.zeros((1, 2, 2)), np.ones((1, 2))
    with pytest.raises(CapabilityError, match="'kernel_form'.*'tanh'"):
        p.velocity(y, c, 0.5, form="kernel")


def test_kernel_form_and_data_form_agree_on_the_line():
    """The data form on the trapezoid nodes of [-6, 6] (h = 0.05) against the closed form
    over all of R: the integrands φ φ' and φ f are below e^{-18} at the box ends for units
    in [-2, 2] and the trapezoid rule is spectrally accurate, so 1e-7 relative is loose."""
    p = build_problem(_copy(LINE), _copy(INIT))
    rng = np.random.default_rng(1)
    y, c = rng.uniform(-2, 2, (1, 5, 1)), rng.standard_normal((1, 5))
    vd = p.velocity(y, c, 0.2)
    vk = p.velocity(y, c, 0.2, form="kernel")
    for a, b in zip(vd, vk):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_other_parts_build():
    cases = [
        ({"kernel": {"kind": "circle", "kappa": 2.0}, "measure": {"kind": "circle", "nodes": 32},
          "target": {"kind": "fourier", "cos": [0.0, 1.0]}}, {"kernel_form", "fft", "sample"}),
        ({"kernel": {"kind": "sphere", "alpha": 1.0}, "measure": {"kind": "sphere", "nodes": 50},
          "target": {"kind": "3spin", "seed": 4}, "d": 3, "energy": "interpolation"},
         {"kernel_form", "constraint", "sample"}),
        ({"kernel": {"kind": "relu"}, "measure": {"kind": "gaussian", "nodes": 81, "scale": 2.0},
          "target": {"kind": "teacher", "units": 3}, "d": 2, "seed": 2}, {"sample", "grad_x"}),
        ({"kernel": {"kind": "gaussian", "sigma": 1.0},
          "measure": {"kind": "gaussian", "nodes": 9}, "target": {"kind": "teacher", "units": 2},
          "d": 1}, {"kernel_form", "sample", "hessian_y"}),
    ]
    for cfg, caps in cases:
        p = build_problem(cfg, {})
        assert caps <= p.capabilities(), (cfg, p.capabilities())
        assert np.all(np.isfinite(p.f_x))
    # the relu kernel declares no Hessian: the influence method is refused by name
    assert "hessian_y" not in build_problem(cases[2][0], {}).capabilities()


def test_file_measure_and_target(tmp_path):
    x = np.linspace(-1, 1, 7)[:, None]
    w = np.full(7, 2 / 7)
    xr.Dataset({"x": (("x", "x_dim"), x), "weight": (("x",), w)}).to_netcdf(
        tmp_path / "mu.nc", engine="h5netcdf")
    xr.Dataset({"f": (("x",), np.sin(x[:, 0]))}).to_netcdf(tmp_path / "f.nc", engine="h5netcdf")
    cfg = {"kernel": {"kind": "tanh"}, "measure": {"kind": "file", "path": str(tmp_path / "mu.nc")},
           "target": {"kind": "file", "path": str(tmp_path / "f.nc")}}
    p = build_problem(cfg, {})
    np.testing.assert_array_equal(p.f_x, np.sin(x[:, 0]))
    np.testing.assert_array_equal(p.w, w)
    assert "sample" not in p.capabilities()
    with pytest.raises(CapabilityError, match="'evaluate'"):
        p.target(x + 0.1)
    cfg["measure"]["path"] = str(tmp_path / "missing.nc")
    with pytest.raises(ConfigError, match="problem.measure.path"):
        build_problem(cfg, {})
    assert FileMeasure.name == "file" and FileTarget.name == "file"


# -- the y laws' solver methods -------------------------------------------------------------
LAWS = {
    "circle": YUniformCircle(),
    "box": YUniformBox([-2.0, 0.5], [2.0, 1.5]),
    "normal": YNormal(2, 0.3, 0.7),
}


@pytest.mark.parametrize("name", sorted(LAWS))
def test_y_quadrature_integrates_against_samples_exactly(name):
    """Each tensor rule integrates a smooth test function: compared with the law's exact
    moments (a polynomial of degree 2 per coordinate, exact for these rules)."""
    law = LAWS[name]
    nodes, w = law.quadrature(8)
    assert nodes.shape == (len(w), law.N) and np.isclose(w.sum(), 1.0, rtol=1e-14)
    if name == "circle":
        np.testing.assert_allclose(w @ np.cos(nodes[:, 0]) ** 2, 0.5, rtol=1e-14)
    elif name == "box":
        mean = (law.low + law.high) / 2
        var = (law.high - law.low) ** 2 / 12
        np.testing.assert_allclose(w @ nodes, mean, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(w @ (nodes - mean) ** 2, var, rtol=1e-13)
    else:
        np.testing.assert_allclose(w @ nodes, law.mean, rtol=1e-13)
        np.testing.assert_allclose(w @ (nodes - law.mean) ** 2, law.std**2, rtol=1e-13)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_cell_masses_are_exact(name):
    law = LAWS[name]
    box = law.default_box()
    edges = [np.linspace(lo, hi, 13) for lo, hi in box]
    m = law.cell_masses(edges)
    assert m.shape == (12,) * law.N
    # total mass: 1 up to the normal law's tails beyond 6 std (2 * 1e-9 per coordinate)
    np.testing.assert_allclose(m.sum(), 1.0, rtol=0, atol=1e-8)
    # one cell against the density integrated by a 20-point Gauss rule per coordinate
    t, wt = np.polynomial.legendre.leggauss(20)
    lo = [e[5] for e in edges]
    hi = [e[6] for e in edges]
    pts = np.stack(np.meshgrid(*[a + (t + 1) * (b - a) / 2 for a, b in zip(lo, hi)],
                               indexing="ij"), -1).reshape(-1, law.N)
    ww = np.prod(np.stack(np.meshgrid(*[wt * (b - a) / 2 for a, b in zip(lo, hi)],
                                      indexing="ij"), -1).reshape(-1, law.N), -1)
    np.testing.assert_allclose(m[(5,) * law.N], ww @ law.pdf(pts), rtol=1e-12)


def test_default_boxes():
    assert LAWS["circle"].default_box() == [(0.0, 2 * np.pi)]
    np.testing.assert_allclose(LAWS["normal"].default_box()[0], (0.3 - 4.2, 0.3 + 4.2))
    lo, hi = LAWS["box"].default_box()[0]
    assert (lo, hi) == (-2.0 - 4 * BOX_MARGIN, 2.0 + 4 * BOX_MARGIN)


def test_lebesgue_is_the_trapezoid_rule():
    mu = Lebesgue([-1.0], [3.0], 5)
    np.testing.assert_array_equal(mu.nodes[:, 0], [-1.0, 0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(mu.weights, [0.5, 1.0, 1.0, 1.0, 0.5])


# -- house rules -------------------------------------------------------------------------------
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for pkg in ("particles", "meanfield", "analysis") for p in (ROOT / pkg).rglob("*.py"))


def _imports(path, module):
    """Modules of the three floors that ``module`` imports (from its AST)."""
    import ast

    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m in MODULES and m != module}


def test_no_import_cycle_and_floors_only_import_downwards():
    """Static: the import graph of the three floors has no cycle (depth-first search) and
    particles imports neither meanfield nor analysis, meanfield not analysis."""
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for pkg in ("particles", "meanfield", "analysis") for p in (ROOT / pkg).rglob("*.py")}
    graph = {m: _imports(p, m) for m, p in paths.items()}
    floor = {"particles": 0, "meanfield": 1, "analysis": 2}
    for m, deps in graph.items():
        for dep in deps:
            assert floor[dep.split(".")[0]] <= floor[m.split(".")[0]], (m, dep)
    state = {}

    def visit(m, stack):
        state[m] = 1
        for dep in graph[m]:
            # a package importing its own submodules is not a cycle
            if dep.startswith(m + "."):
                continue
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(stack + [m, dep])}"
            if dep not in state:
                visit(dep, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    assert "particles.highdim" not in graph


#: the rooms of the house, lowest first (docs/engine.md draws them): a module imports only
#: its own room and the rooms below it; two rooms on one level never import each other
ROOMS = {"particles.engine": 0, "particles": 1, "meanfield.defaults": 2, "meanfield.grid": 3,
         "meanfield": 4, "analysis.store": 5, "analysis.sweep": 6, "analysis.checks": 6,
         "analysis.run": 7, "analysis.report": 7, "analysis": 8}


def room(module):
    """The room of a module: the longest prefix in :data:`ROOMS`."""
    return max((r for r in ROOMS if module == r or module.startswith(r + ".")), key=len)


def test_rooms_only_import_rooms_below():
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for pkg in ("particles", "meanfield", "analysis") for p in (ROOT / pkg).rglob("*.py")}
    wrong = [(m, dep) for m, p in paths.items() for dep in _imports(p, m)
             if room(dep) != room(m) and not ROOMS[room(dep)] < ROOMS[room(m)]]
    assert not wrong, wrong


@pytest.mark.slow
def test_every_module_imports_alone():
    """Each module in a fresh interpreter (an import-order dependence fails here)."""
    for m in MODULES:
        r = subprocess.run([sys.executable, "-c", f"import {m}"], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 0, (m, r.stderr[-500:])


def test_particles_modules_are_at_most_500_lines():
    long = [str(p) for p in (ROOT / "particles").rglob("*.py")
            if len(p.read_text().splitlines()) > 500]
    assert not long, long
