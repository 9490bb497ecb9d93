"""Checking configuration sections before any work starts.

A config is the dict read from a TOML file. Every section is checked against a schema
of allowed keys; errors name the key, what was given and what is allowed.
"""
from __future__ import annotations

import numbers

__all__ = ["ConfigError", "CapabilityError", "require", "check_section", "number", "integer", "choice", "number_list", "distinct",
           "integer_list", "table", "boolean", "string", "schedule"]


class ConfigError(ValueError):
    """A config that cannot be run, with a message that says what to change."""


class CapabilityError(ConfigError):
    """A solver needs a capability the problem's parts do not declare."""


def require(part, capability: str, purpose: str):
    """Refuse, naming the capability, when ``part`` (a kernel, measure or target) does not
    declare ``capability`` in its ``capabilities``."""
    if capability not in getattr(part, "capabilities", frozenset()):
        name = getattr(part, "name", type(part).__name__)
        raise CapabilityError(
            f"{purpose} needs the capability {capability!r}, which {name} does not declare "
            f"(it declares {sorted(getattr(part, 'capabilities', ()))}); choose another "
            "method or a part that provides it"
        )


def _fail(where, msg):
    raise ConfigError(f"{where}: {msg}")


def number(lo=None, hi=None, lo_open=False):
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            _fail(where, f"expected a number, got {v!r}")
        v = float(v)
        if v != v or v in (float("inf"), float("-inf")):
            _fail(where, f"expected a finite number, got {v!r}")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            _fail(where, f"must be {'>' if lo_open else '>='} {lo}, got {v}")
        if hi is not None and v > hi:
            _fail(where, f"must be <= {hi}, got {v}")
        return v
    check.doc = "number"
    return check


def integer(lo=None, hi=None):
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            _fail(where, f"expected an integer, got {v!r}")
        if lo is not None and v < lo:
            _fail(where, f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            _fail(where, f"must be <= {hi}, got {v}")
        return int(v)
    return check


def boolean():
    def check(v, where):
        if not isinstance(v, bool):
            _fail(where, f"expected true or false, got {v!r}")
        return v
    return check


def string():
    def check(v, where):
        if not isinstance(v, str):
            _fail(where, f"expected a string, got {v!r}")
        return v
    return check


def choice(*allowed):
    def check(v, where):
        if not isinstance(v, str):
            _fail(where, f"expected a name (a string), got {v!r}; use one of "
                         f"{', '.join(map(repr, allowed))}")
        if v not in allowed:
            _fail(where, f"{v!r} is not allowed; use one of {', '.join(map(repr, allowed))}")
        return v
    return check


def distinct(values, where):
    """Refuse repeated entries of a list whose entries must differ; return ``values``."""
    seen, repeated = set(), []
    for v in values:
        if v in seen and v not in repeated:
            repeated.append(v)
        seen.add(v)
    if repeated:
        _fail(where, f"repeated value(s) {repeated}; every entry must differ: give each "
                     f"once, e.g. {list(dict.fromkeys(values))}")
    return values


def number_list(lo=None, min_len=0, unique=False):
    item = number(lo=lo)

    def check(v, where):
        if not isinstance(v, list):
            _fail(where, f"expected a list of numbers, got {v!r}")
        if len(v) < min_len:
            _fail(where, f"expected at least {min_len} entries, got {len(v)}")
        out = [item(e, f"{where}[{i}]") for i, e in enumerate(v)]
        return distinct(out, where) if unique else out
    return check


def integer_list(lo=None, min_len=1, unique=False):
    """A list of integers (a single integer is a list of one); ``unique``: no repeats."""
    item = integer(lo=lo)

    def check(v, where):
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or len(v) < min_len:
            _fail(where, f"expected a list of integers, got {v!r}")
        out = [item(e, f"{where}[{i}]") for i, e in enumerate(v)]
        return distinct(out, where) if unique else out
    return check


def schedule(value_check):
    """A scalar, or a piecewise-constant schedule [[t0, v0], [t1, v1], ...] with t0 = 0."""
    def check(v, where):
        if isinstance(v, list):
            if not v or any(not isinstance(e, list) or len(e) != 2 for e in v):
                _fail(where, f"expected a value or a list of [time, value] pairs, got {v!r}")
            out = [[number(lo=0)(e[0], f"{where}[{i}][0]"), value_check(e[1], f"{where}[{i}][1]")]
                   for i, e in enumerate(v)]
            times = [e[0] for e in out]
            if times[0] != 0 or any(b <= a for a, b in zip(times, times[1:])):
                _fail(where, f"schedule times {times} must start at 0 and increase")
            return out
        return value_check(v, where)
    return check


def table(schema, required=()):
    def check(v, where):
        if not isinstance(v, dict):
            _fail(where, f"expected a table, got {v!r}")
        return check_section(v, schema, where, required)
    return check


def check_section(section, schema, where, required=()):
    """Check a dict against ``schema`` {key: validator}; return the checked dict.

    Unknown keys and missing required keys are errors naming the allowed keys.
    """
    if not isinstance(section, dict):
        _fail(where, f"expected a table, got {section!r}")
    unknown = sorted(set(section) - set(schema))
    if unknown:
        _fail(where, f"unknown key(s) {unknown}; allowed keys are {sorted(schema)}")
    missing = [k for k in required if k not in section]
    if missing:
        _fail(where, f"missing required key(s) {missing}")
    return {k: schema[k](v, f"{where}.{k}") for k, v in section.items()}
