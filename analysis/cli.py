"""The command line ``mfpc``: a thin layer over :mod:`analysis.run.experiment`.

``mfpc run CONFIG.toml --out DIR [--force]`` runs every section of the config as a sweep of
tasks (:mod:`analysis.sweep.driver`: a killed run resumes), serially or on ``--workers N`` local
processes, ``--dask-local N`` or ``--scheduler ADDRESS`` (Dask), with ``--retries K``.
``mfpc advise CONFIG [--out DIR] [--sgd-ratio r]`` prints the step and batch guidelines
for the config's problem (:mod:`analysis.advise`). ``mfpc report DIR`` checks the paper's
predictions on the outputs in DIR and writes ``analysis.nc``, ``report.md`` and ``figures/``
there (:func:`analysis.report.make.make_report`).
Exit codes: 0 done (or nothing to do), 2 bad input (refused before any work: nothing is
written; also an output folder that cannot be used: not writable, in use by another run,
holding files of another run, a failed run without ``--force``), 3 numerical failure in any section (what was computed is kept in
``DIR/<section>.nc`` marked ``complete = 0``; the sections before it are complete), or
tasks that failed after their retries (the others merged; ``missing_members``), 130
interrupted (Ctrl-C: finished tasks are kept, the same command resumes).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

# the packages are imported inside main (after the parser): a Ctrl-C while numpy, scipy
# and xarray load is then an interruption like any other (exit 130, no traceback)
__all__ = ["main"]


def _parser():
    p = argparse.ArgumentParser(
        prog="mfpc",
        description="Neural networks as interacting particle systems: finite-n runs, "
        "mean-field limit and fluctuations.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run every section of a TOML config into a folder")
    r.add_argument("config", help="the TOML config (see docs/config.md)")
    r.add_argument("--out", required=True, help="output folder (created if missing)")
    r.add_argument("--force", action="store_true",
                   help="recompute every section: remove the run files in DIR first")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.add_argument("--workers", type=int, metavar="N",
                   help="run the tasks on N local processes (default: serially)")
    r.add_argument("--dask-local", type=int, metavar="N",
                   help="run the tasks on a Dask LocalCluster of N workers (extra: dask)")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the tasks on a running Dask scheduler (extra: dask)")
    r.add_argument("--retries", type=int, default=2, metavar="K",
                   help="submit a task that raised again up to K times (default 2)")
    r.add_argument("--checkpoint-every", type=float, metavar="S",
                   help="checkpoint long tasks every S seconds under DIR/tasks")
    r.add_argument("--backend", choices=("numpy", "jax"),
                   help="who steps the particles (replaces [dynamics] backend; "
                        "docs/backends.md)")
    rp = sub.add_parser("report", help="check the predictions on the outputs of `mfpc run`")
    rp.add_argument("dir", help="output folder of `mfpc run` (holds particles.nc)")
    rp.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    ad = sub.add_parser("advise", help="step and batch guidelines for a config's problem")
    ad.add_argument("config", help="the TOML config (see docs/config.md)")
    ad.add_argument("--out", metavar="DIR", help="also write DIR/advice.nc")
    ad.add_argument("--sgd-ratio", type=float, default=0.1, metavar="r",
                    help="advise the batch P at which the SGD term is r times the "
                         "discreteness term (default 0.1)")
    p.add_argument("-v", "--verbose", action="store_true", help="more log messages")
    return p


def _failure(e):
    """The message of a numerical failure: what failed and what was kept."""
    print(f"mfpc: numerical failure: {e}", file=sys.stderr)
    path = getattr(e, "path", None)
    if path is not None:
        print(f"mfpc: what was computed is kept in {path} (attrs complete = 0)",
              file=sys.stderr)
    else:
        print("mfpc: the failed section kept nothing (its solver returned no partial result)",
              file=sys.stderr)
    done = [str(p) for p, state in getattr(e, "status", {}).values() if state == "written"]
    if done:
        print(f"mfpc: complete before the failure: {', '.join(done)}", file=sys.stderr)
    return 3


def _interrupted(args, command) -> int:
    """Ctrl-C: what was kept and how to go on (exit 130, as a shell reports SIGINT)."""
    if args.command == "run":
        print(f"mfpc: interrupted: the run stopped. Finished tasks are kept in "
              f"{args.out}/tasks and files already written are whole; run the same command "
              f"again to resume: {command}", file=sys.stderr)
    else:
        print(f"mfpc: interrupted: the report stopped (every file it wrote is whole); run "
              f"the same command again: {command}", file=sys.stderr)
    return 130


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    command = "mfpc " + " ".join(shlex.quote(str(a)) for a in argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="mfpc: %(levelname)s: %(message)s",
    )
    try:
        return _main(args, command)
    except KeyboardInterrupt:
        return _interrupted(args, command)


def _main(args, command) -> int:
    from particles import NumericalFailure

    from analysis.checks.power import VERDICTS
    from analysis.run.experiment import ConfigError, TasksFailed, run_config

    if args.command == "run":
        try:
            status = run_config(args.config, args.out, force=args.force,
                                progress=False if args.no_progress else None,
                                command=command, workers=args.workers,
                                dask_local=args.dask_local, scheduler=args.scheduler,
                                retries=args.retries, checkpoint_every=args.checkpoint_every,
                                backend=args.backend)
        except ConfigError as e:
            print(f"mfpc: error: {e}", file=sys.stderr)
            return 2
        except TasksFailed as e:
            print(f"mfpc: {e}", file=sys.stderr)
            for path, state in e.status.values():
                print(f"{path}: {state}")
            return 3
        except NumericalFailure as e:  # a SectionFailure: any section
            return _failure(e)
        for section, (path, state) in status.items():
            if state.startswith("up to date"):
                print(f"{path}: exists from the same config, {state}; nothing done "
                      "(use --force to recompute)")
            else:
                print(f"{path}: {state}")
        return 0
    if args.command == "report":
        from analysis.report.make import make_report

        if not args.dir.strip():
            print('mfpc: error: mfpc report "" names no folder; name the --out folder of '
                  '`mfpc run`', file=sys.stderr)
            return 2
        if not (Path(args.dir) / "particles.nc").is_file():
            print(f"mfpc: error: {args.dir} has no particles.nc; run `mfpc run CONFIG --out "
                  f"{args.dir}` first", file=sys.stderr)
            return 2
        try:
            res = make_report(args.dir, figures=not args.no_figures, command=command)
        except ConfigError as e:
            print(f"mfpc: error: {e}", file=sys.stderr)
            return 2
        if res["incomplete"]:
            print(f"mfpc: warning: {res['incomplete']}", file=sys.stderr)
        v = res["verdicts"]
        counts = [f"{v[k]} {k}" for k in VERDICTS if k != "n.a." or v[k]]
        counts.append(f"{len(res.get('not_applicable', ()))} not applicable")
        print(f"{res['report']}: " + ", ".join(counts))
        print(f"{res['analysis']}: written; {len(res['figures'])} figures in "
              f"{Path(args.dir) / 'figures'}")
        return 0
    if args.command == "advise":
        from analysis.advise import advise_config

        try:
            _, text = advise_config(args.config, out=args.out, ratio=args.sgd_ratio,
                                   command=command)
        except ConfigError as e:
            print(f"mfpc: error: {e}", file=sys.stderr)
            return 2
        except NumericalFailure as e:
            print(f"mfpc: numerical failure: {e}", file=sys.stderr)
            return 3
        print(text)
        if args.out:
            print(f"{Path(args.out) / 'advice.nc'}: written")
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
