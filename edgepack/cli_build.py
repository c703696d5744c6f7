"""`edgepack build RECIPE...`: one or several recipes as one plan, `--plan` to print it without running."""

from __future__ import annotations

import json
import sys

import click

from .errors import EdgepackError

SEVERITY = (0, 5, 3, 4, 1, 2)  # ok < partial < gates failed < verification < build error < bad input


def worst(codes: list[int]) -> int:
    """The combined exit code of several recipes: the worst of theirs (docs/cli.md)."""
    return max(codes, key=lambda c: SEVERITY.index(c) if c in SEVERITY else len(SEVERITY), default=0)


def _load_all(recipes):
    from .recipe import load_recipe

    if len(recipes) == 1:
        return [load_recipe(recipes[0])]
    out = []
    for p in recipes:
        try:
            out.append(load_recipe(p))
        except EdgepackError as e:  # that recipe fails alone
            out.append(e)
    return out


def print_plan(lrs, opts, as_json: bool | None = None) -> None:
    from .engine import Progress
    from .pipeline import make_build_plan
    from .plan import dry_run

    plan, builds = make_build_plan(lrs, opts, Progress(quiet=True))
    rows = dry_run(plan)
    if opts.quiet if as_json is None else as_json:
        click.echo(json.dumps({"nodes": rows, "stopped": [b.one_line() for b in builds if isinstance(b, EdgepackError)]}, indent=2))
        return
    for b in builds:
        if isinstance(b, EdgepackError):
            click.echo(f"not planned: {b.one_line()}", err=True)
    click.echo(f"{'node':<44} {'kind':<10} {'cached':<8} depends on")
    for row in rows:
        cached = {True: "yes", False: "no", None: "-"}[row["cached"]]
        click.echo(f"{row['id']:<44} {row['kind']:<10} {cached:<8} {', '.join(row['deps'])}")
    n = sum(1 for r in rows if r["cached"])
    click.echo(f"\n{len(rows)} nodes, {n} cached (- : decided when it runs; nothing was run)")


def _echo_result(res, as_json: bool) -> dict | None:
    from .report import summary_rows, summary_table

    if as_json:
        return {"status": res.status, "exit_code": res.exit_code, "bundle": str(res.bundle), "report": str(res.report_path),
                "published": res.published, "not_published": res.not_published, "failures": res.failures,
                "summary": summary_rows(res.report)}
    click.echo(summary_table(res.report, color=sys.stdout.isatty()))
    click.echo(f"\nbundle: {res.bundle}")
    if res.bundle is not None and (res.bundle / "report.html").is_file():
        click.echo(f"report: {res.bundle / 'report.html'} (MODEL_CARD.md beside it)")
    if res.published:
        click.echo(f"published: {res.published.get('ref')} ({res.published.get('digest')})")
    if res.not_published:
        click.echo(f"not published: {res.not_published}")
    for f in res.failures:
        click.echo(f"failed: {f}", err=True)
    return None


def _echo_failed_table(e: EdgepackError, as_json: bool) -> None:
    """A gate failure carries its report: the summary table (failing cells marked) goes before the error line."""
    from .report import summary_table

    if getattr(e, "report", None) and not as_json:
        click.echo(summary_table(e.report, color=sys.stdout.isatty()))  # type: ignore[attr-defined]


def run_build(recipes, opts, plan_only: bool = False, as_json: bool | None = None, loaded=None) -> None:
    """``as_json`` (default: opts.quiet): one JSON document on stdout; opts.quiet alone (--quiet) only drops progress.
    ``loaded``: called once the recipes are loaded (the edgepack process ends its start-up there: cli._startup_over)."""
    from .pipeline import build, build_many

    as_json = opts.quiet if as_json is None else as_json

    try:
        lrs = _load_all(recipes)
    finally:
        if loaded is not None:
            loaded()
    good = [lr for lr in lrs if not isinstance(lr, EdgepackError)]
    if plan_only:
        print_plan(good, opts, as_json)
        sys.exit(worst([e.exit_code for e in lrs if isinstance(e, EdgepackError)]))
    if len(lrs) == 1:
        try:
            res = build(lrs[0], opts)
        except EdgepackError as e:
            _echo_failed_table(e, as_json)
            raise
        out = _echo_result(res, as_json)
        if out is not None:
            click.echo(json.dumps(out, indent=2, default=str))
        sys.exit(res.exit_code)
    results = iter(build_many(good, opts) if good else [])
    per, codes = [], []
    for path, lr in zip(recipes, lrs):
        one = lr if isinstance(lr, EdgepackError) else next(results)  # a BuildResult, or the recipe's load error
        if isinstance(one, EdgepackError):
            _echo_failed_table(one, as_json)
            codes.append(one.exit_code)
            per.append({"recipe": str(path), "status": "error", "exit_code": one.exit_code, "error": one.one_line(), "error_detail": one.fields()})
            if not as_json:
                click.echo(f"\n{path}: error: {one.one_line()}", err=True)
            continue
        res = one
        codes.append(res.exit_code)
        if not as_json:
            click.echo(f"\n== {path}")
        out = _echo_result(res, as_json)
        per.append({"recipe": str(path), **(out or {"status": res.status, "exit_code": res.exit_code})})
    if as_json:
        click.echo(json.dumps({"exit_code": worst(codes), "recipes": per}, indent=2, default=str))
    else:
        click.echo("\n" + "\n".join(f"{p['recipe']}: {p['status']} (exit {p['exit_code']})" for p in per))
    sys.exit(worst(codes))
