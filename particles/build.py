r"""Building a problem from config tables: ``[problem]``, its parts, and ``[init]``.

``build_problem(problem_cfg, init_cfg)`` takes either a preset (``[problem] kind = ...``,
:mod:`particles.presets`) or the parts tables ``[problem.kernel]``, ``[problem.measure]``,
``[problem.target]`` (``docs/config_problems.md``), with ``[init]`` for the initial laws.
Every key is checked before anything is built; errors name the key and say what to do.

Dimensions: d comes from the measure (``low``/``high`` of ``lebesgue``, the file, the
circle's 1), else from ``[problem] d``. Problem-level randomness (teacher units, 3-spin
coefficients, node samples) follows :func:`particles.presets.problem_rngs` of
``[problem] seed`` (default 0); ``[problem.target] seed`` replaces it for the target.
Relative paths (``file`` parts, ``python`` parts) are taken from the folder of the config
file (``base``). A part table with ``python = "FILE.py:NAME"`` instead of ``kind`` builds
the part in the user's file, ``[problem] python`` the whole problem
(:mod:`particles.userparts`).
"""
from __future__ import annotations

from particles.engine import config as C
from particles.closed_forms import kernel_form
from particles.kernels import ACTIVATIONS, CircleKernel, GaussianRBF, SigmoidUnit, SphereRBF
from particles.laws import CLaw, YNormal, YUniformBox, YUniformCircle, YUniformSphere
from particles.measures import DATA_MAX, CircleUniform, FileMeasure, Lebesgue, SphereUniform
from particles.presets import PRESETS, check_circle_width, draw_target, gaussian_measure, preset_problem, problem_rngs
from particles.problem import Problem
from particles import userparts
from particles.targets import FileTarget, FourierTarget, GaussianMixture

__all__ = ["build_problem", "c_law_from_config", "y_law_from_config", "INIT_SCHEMA",
           "KERNEL_KEYS", "MEASURE_KEYS", "TARGET_KEYS"]

C_LAW_SCHEMA = {
    "law": C.choice("normal", "uniform", "constant"),
    "mean": C.number(),
    "std": C.number(lo=0, lo_open=True),
    "low": C.number(),
    "high": C.number(),
    "value": C.number(),
}
Y_LAW_SCHEMA = {
    "law": C.choice("uniform", "normal", "uniform_sphere"),
    "mean": C.number(),
    "std": C.number(lo=0, lo_open=True),
    "low": C.number_list(min_len=1),
    "high": C.number_list(min_len=1),
}
INIT_SCHEMA = {
    "c": C.table(C_LAW_SCHEMA, required=("law",)),
    "y": C.table(Y_LAW_SCHEMA, required=("law",)),
    "file": C.string(),
}

_pos = C.number(lo=0, lo_open=True)
#: kernel kind -> {key: validator} (besides ``kind``), and the required keys
KERNEL_KEYS = {
    "circle": ({"kappa": _pos}, ("kappa",)),
    "gaussian": ({"sigma": _pos, "normalised": C.boolean()}, ("sigma",)),
    "sphere": ({"alpha": _pos}, ("alpha",)),
    **{a: ({}, ()) for a in ACTIVATIONS},
}
MEASURE_KEYS = {
    "circle": ({"nodes": C.integer(lo=4)}, ("nodes",)),
    "gaussian": ({"scale": _pos, "nodes": C.integer(lo=1)}, ("nodes",)),
    "lebesgue": ({"low": C.number_list(min_len=1), "high": C.number_list(min_len=1),
                  "nodes": C.integer(lo=2)}, ("low", "high", "nodes")),
    "sphere": ({"nodes": C.integer(lo=1)}, ("nodes",)),
    "file": ({"path": C.string()}, ("path",)),
}
TARGET_KEYS = {
    "fourier": ({"cos": C.number_list(), "sin": C.number_list()}, ()),
    "teacher": ({"units": C.integer(lo=1), "seed": C.integer(lo=0)}, ("units",)),
    "3spin": ({"seed": C.integer(lo=0)}, ()),
    "gaussian_mixture": ({"weights": C.number_list(min_len=1),
                          "centres": lambda v, w: [C.number_list(min_len=1)(e, f"{w}[{i}]")
                                                   for i, e in enumerate(_list(v, w))],
                          "sigmas": C.number_list(lo=0, min_len=1)},
                         ("weights", "centres", "sigmas")),
    "file": ({"path": C.string()}, ("path",)),
}
PARTS_SCHEMA = {"kernel": None, "measure": None, "target": None, "seed": C.integer(lo=0),
                "d": C.integer(lo=1), "energy": C.choice("data", "interpolation")}


def _list(v, where):
    if not isinstance(v, list):
        raise C.ConfigError(f"{where}: expected a list of lists of numbers, got {v!r}")
    return v


def _part(cfg, where, table):
    """Check one part table against ``table`` (kind -> (schema, required))."""
    if not isinstance(cfg, dict):
        raise C.ConfigError(f"{where}: expected a table with a key 'kind', got {cfg!r}")
    if "python" in cfg:  # a part in the user's file: its keys are its own
        if "kind" in cfg:
            raise C.ConfigError(f"{where}: give either kind or python, not both (python = "
                                "\"FILE.py:NAME\" builds the part in your file)")
        return dict(cfg)
    if "kind" not in cfg:
        raise C.ConfigError(f"{where}: missing key 'kind'; use one of {sorted(table)}, or "
                            "python = \"FILE.py:NAME\" for a part written in your own file")
    kind = C.choice(*table)(cfg["kind"], f"{where}.kind")
    schema, required = table[kind]
    extra = sorted(set(cfg) - {"kind"} - set(schema))
    if extra:
        raise C.ConfigError(f"{where}: key(s) {extra} do not apply to kind={kind!r}; it takes "
                            f"{sorted(schema) or 'no other keys'}")
    return C.check_section(cfg, {"kind": lambda v, w: v, **schema}, where, ("kind",) + required)


def c_law_from_config(cfg):
    cfg = dict(cfg or {"law": "normal"})
    law = cfg.get("law", "normal")
    allowed = {"normal": {"mean", "std"}, "uniform": {"low", "high"}, "constant": {"value"}}
    extra = set(cfg) - {"law"} - allowed[law]
    if extra:
        raise C.ConfigError(
            f"init.c: key(s) {sorted(extra)} do not apply to law={law!r}; "
            f"it takes {sorted(allowed[law])}"
        )
    _check_init_sizes(cfg, "init.c")
    try:
        return CLaw(**cfg)
    except ValueError as e:
        raise C.ConfigError(str(e)) from None


def _check_init_sizes(cfg, where):
    """The numbers of an initial law at most :data:`particles.measures.DATA_MAX` = 1e8
    in size, the bound on the values of an ``init.file`` (the same reason: initial units
    are O(1), and beyond 1e8 no dt is stable)."""
    for key, v in cfg.items():
        if key == "law":
            continue
        for i, x in enumerate(v if isinstance(v, list) else [v]):
            if isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) > DATA_MAX:
                at = f"[{i}]" if isinstance(v, list) else ""
                raise C.ConfigError(
                    f"{where}.{key}{at} = {x:g} is beyond {DATA_MAX:g} in size, the bound on "
                    "initial units (as for init.file): initial laws are O(1); check the units")


def y_law_from_config(y_cfg, kernel):
    """The y law of a checked ``init.y`` for ``kernel`` (default by the kernel's y domain:
    the whole circle, the uniform sphere, or N(0, I))."""
    dom, N = kernel.y_domain, kernel.N
    if y_cfg is not None:
        _check_init_sizes(y_cfg, "init.y")
    if y_cfg is None:
        return {"circle": YUniformCircle, "sphere": lambda: YUniformSphere(N)}.get(
            dom, lambda: YNormal(N))()
    law = y_cfg["law"]
    allowed = {"uniform": {"low", "high"}, "normal": {"mean", "std"}, "uniform_sphere": set()}
    extra = set(y_cfg) - {"law"} - allowed[law]
    if extra:
        raise C.ConfigError(f"init.y: key(s) {sorted(extra)} do not apply to law={law!r}; it "
                            f"takes {sorted(allowed[law]) or 'no other keys'}")
    fits = {"circle": ("uniform",), "sphere": ("uniform_sphere",),
            "euclidean": ("uniform", "normal")}[dom]
    if law not in fits:
        raise C.ConfigError(f"init.y.law={law!r} does not fit kernel {kernel.name!r} (y on the "
                            f"{dom}); use one of {', '.join(map(repr, fits))}")
    if law == "uniform_sphere":
        return YUniformSphere(N)
    if law == "normal":
        return YNormal(N, y_cfg.get("mean", 0.0), y_cfg.get("std", 1.0))
    if dom == "circle":
        if set(y_cfg) != {"law"}:
            raise C.ConfigError("init.y: on the circle law = 'uniform' is the whole circle; "
                                "drop low and high")
        return YUniformCircle()
    if "low" not in y_cfg or "high" not in y_cfg:
        raise C.ConfigError("init.y: law = 'uniform' off the circle needs low = [..] and "
                            f"high = [..], one number per y coordinate ({N})")
    if len(y_cfg["low"]) != N or len(y_cfg["high"]) != N:
        raise C.ConfigError(f"init.y: low and high need {N} numbers (one per y coordinate of "
                            f"kernel {kernel.name!r}), got {y_cfg['low']} and {y_cfg['high']}")
    try:
        return YUniformBox(y_cfg["low"], y_cfg["high"])
    except ValueError as e:
        raise C.ConfigError(str(e)) from None


def _path(p, base):
    """``p`` relative to the config's folder ``base`` (absolute paths as they are)."""
    from pathlib import Path

    p = Path(p)
    return p if p.is_absolute() else Path(base) / p


def _measure(m, d_cfg, seed, base=".", files=None):
    """The measure of a checked ``[problem.measure]`` and its dimension."""
    _, x_rng = problem_rngs(seed)
    if "python" in m:
        reserved = {"rng": x_rng, **({} if d_cfg is None else {"d": d_cfg})}
        measure, info = userparts.build_part("measure", m, base, reserved)
        userparts.probe_measure(measure, info)
        return measure
    kind = m["kind"]
    try:
        if kind == "circle":
            return CircleUniform(m["nodes"])
        if kind == "lebesgue":
            if len(m["low"]) != len(m["high"]):
                raise C.ConfigError(f"problem.measure: low {m['low']} and high {m['high']} "
                                    "need the same length (d)")
            return Lebesgue(m["low"], m["high"], m["nodes"])
        if kind == "file":
            p = _path(m["path"], base)
            measure = FileMeasure(p)
            files["problem.measure.path"] = userparts.file_record(p)
            return measure
        if d_cfg is None:
            raise C.ConfigError(f"problem: measure kind={kind!r} does not give d; add d = .. "
                                "to [problem]")
        if kind == "gaussian":
            return gaussian_measure(d_cfg, m["nodes"], m.get("scale", 1.0), x_rng,
                                    "problem.measure.nodes")
        return SphereUniform(d_cfg, m["nodes"], x_rng)
    except ValueError as e:
        if isinstance(e, C.ConfigError):
            raise
        raise C.ConfigError(str(e)) from None


def _kernel(k, d):
    kind = k["kind"]
    if kind == "circle":
        if d != 1:
            raise C.ConfigError(f"problem.kernel: kind='circle' needs d = 1, the measure has d={d}")
        return CircleKernel(k["kappa"])
    if kind == "gaussian":
        try:
            return GaussianRBF(d, k["sigma"], k.get("normalised", False))
        except ArithmeticError:  # (2 pi sigma^2)^(-d/2) is 0 or overflows
            raise C.ConfigError(
                f"problem.kernel.sigma={k['sigma']:g}: the kernel's normalisation "
                f"(2 pi sigma^2)^(-d/2) with d={d} is not a finite positive number; use a "
                "sigma on the scale of the data (e.g. of the measure's low/high)") from None
    if kind == "sphere":
        return SphereRBF(d, k["alpha"])
    return SigmoidUnit(d, kind)


def _target(t, kernel, measure, seed, base=".", files=None):
    d = measure.d if hasattr(measure, "d") else 1
    if "python" in t:
        rng, _ = problem_rngs(t.get("seed", seed) if isinstance(t.get("seed"), int) else seed)
        target, info = userparts.build_part(
            "target", t, base, {"d": d, "measure": measure, "kernel": kernel, "rng": rng})
        userparts.probe_target(target, measure, info)
        return target
    kind = t["kind"]
    if kind == "fourier":
        if getattr(measure, "domain", None) != "circle":
            raise C.ConfigError("problem.target: kind='fourier' needs a measure on the circle "
                                "(measure kind='circle', or a Python measure with "
                                "domain = 'circle')")
        return FourierTarget(t.get("cos", ()), t.get("sin", ()))
    if kind == "file":
        p = _path(t["path"], base)
        target = FileTarget(p, measure.nodes)
        files["problem.target.path"] = userparts.file_record(p)
        return target
    if kind == "gaussian_mixture":
        if any(len(c) != d for c in t["centres"]):
            raise C.ConfigError(f"problem.target.centres: every centre needs d={d} numbers")
        return GaussianMixture(t["weights"], t["centres"], t["sigmas"])
    rng, _ = problem_rngs(t.get("seed", seed))
    return draw_target({"kind": kind, "units": t.get("units")}, kernel, d, rng)[0]


def _build_parts(cfg, c_law, y_cfg, base="."):
    for key in ("kernel", "measure", "target"):
        if key not in cfg:
            raise C.ConfigError(f"problem: missing table [problem.{key}] (or give a preset "
                                f"kind = one of {sorted(PRESETS)})")
    unknown = sorted(set(cfg) - set(PARTS_SCHEMA))
    if unknown:
        raise C.ConfigError(f"problem: unknown key(s) {unknown}; with parts tables [problem] "
                            f"takes {sorted(PARTS_SCHEMA)}")
    top = C.check_section({k: v for k, v in cfg.items() if PARTS_SCHEMA[k] is not None},
                          {k: v for k, v in PARTS_SCHEMA.items() if v is not None}, "problem")
    k = _part(cfg["kernel"], "problem.kernel", KERNEL_KEYS)
    m = _part(cfg["measure"], "problem.measure", MEASURE_KEYS)
    t = _part(cfg["target"], "problem.target", TARGET_KEYS)
    seed = top.get("seed", 0)
    if "python" not in t and (len(t.get("weights", ())) != len(t.get("sigmas", ())) or (
            "centres" in t and len(t["centres"]) != len(t["weights"]))):
        raise C.ConfigError("problem.target: weights, centres and sigmas need one entry per "
                            "component")
    files = {}
    measure = _measure(m, top.get("d"), seed, base, files)
    d = getattr(measure, "d", measure.nodes.shape[1])
    if "d" in top and top["d"] != d:
        raise C.ConfigError(f"problem.d={top['d']} disagrees with the measure's d={d}; drop it")
    if "python" in k:
        kernel, k_info = userparts.build_part("kernel", k, base,
                                              {"d": d, "rng": problem_rngs(seed)[0]})
    else:
        kernel = _kernel(k, d)
    if k.get("kind") == "circle" and m.get("kind") == "circle":
        check_circle_width(k["kappa"], m["nodes"], "problem.measure.nodes",
                           *((t.get("cos", ()), t.get("sin", ())) if t.get("kind") == "fourier"
                             else ()))
    try:
        target = _target(t, kernel, measure, seed, base, files)
    except ValueError as e:
        if isinstance(e, C.ConfigError):
            raise
        raise C.ConfigError(str(e)) from None
    y_law = y_law_from_config(y_cfg, kernel)
    if "python" in k:
        userparts.probe_kernel(kernel, measure, y_law, k_info)
    energy = top.get("energy", "data")
    form, reason = kernel_form(kernel, measure, target, energy)
    if energy == "interpolation" and form is None:  # it would run the data loss instead
        raise C.ConfigError(
            f"problem.energy = 'interpolation' (4.5) exists for kernel 'sphere' x measure "
            f"'sphere' x target '3spin' or 'teacher'; problem.kernel kind={kernel.name!r}, "
            f"problem.measure kind={measure.name!r}, problem.target kind={target.name!r} "
            f"have none ({reason}); drop problem.energy (the data loss)")
    info = {"kernel.name": kernel.name, "measure.name": measure.name, "target": target.name,
            **{f"target.{a}": b for a, b in target.params().items()},
            "kernel_form": reason, "seed": int(seed)}
    problem = Problem(kernel=kernel, measure=measure, target=target, y_law=y_law, c_law=c_law,
                      kernel_form=form, name="parts", info=info, kernel_form_reason=reason)
    problem.mfpc_files = files
    return problem


def build_problem(problem_cfg, init_cfg=None, base=".") -> Problem:
    """Check ``[problem]`` and ``[init]`` and build the problem (preset, parts, or
    ``[problem] python``); relative paths are relative to ``base`` (the config's folder)."""
    if not isinstance(problem_cfg, dict):
        raise C.ConfigError(f"problem: expected a table, got {problem_cfg!r}")
    init = C.check_section(init_cfg or {}, INIT_SCHEMA, "init")
    if "python" in problem_cfg:
        return _python_problem(problem_cfg, init, base)
    c_law = c_law_from_config(init.get("c"))
    if "kind" in problem_cfg:
        kind = problem_cfg["kind"]
        if isinstance(kind, str) and kind not in PRESETS:
            raise C.ConfigError(f"problem.kind={kind!r} is not known; use one of "
                                f"{sorted(PRESETS)}, or the parts tables [problem.kernel], "
                                "[problem.measure], [problem.target] without kind")
        C.choice(*PRESETS)(kind, "problem.kind")
        for key in ("kernel", "measure"):
            if isinstance(problem_cfg.get(key), dict):
                raise C.ConfigError(f"problem: give either a preset kind or parts tables, not "
                                    f"both; drop kind or [problem.{key}]")
        return preset_problem(problem_cfg, c_law, init.get("y"))
    if not any(k in problem_cfg for k in ("kernel", "measure", "target")):
        raise C.ConfigError(f"problem: missing key 'kind'; use one of {sorted(PRESETS)}, or "
                            "the parts tables [problem.kernel], [problem.measure], "
                            "[problem.target]")
    return _build_parts(problem_cfg, c_law, init.get("y"), base)


def _python_problem(problem_cfg, init, base):
    """``[problem] python = "FILE.py:NAME"``: the whole problem from the user's file."""
    clash = sorted(k for k in ("kind", "kernel", "measure", "target") if k in problem_cfg)
    if clash:
        raise C.ConfigError(f"problem: python builds the whole problem; drop {clash} (or "
                            "put python in the part tables instead)")
    extra = sorted(set(init) - {"file"})
    if extra:
        raise C.ConfigError(f"init: key(s) {extra} do not apply to [problem] python, whose "
                            "problem carries its own initial law (y_law, c_law); drop them")
    seed = C.integer(lo=0)(problem_cfg.get("seed", 0), "problem.seed")
    rng = problem_rngs(seed)[0]
    problem, _ = userparts.build_user_problem(problem_cfg, base, rng)
    return problem
