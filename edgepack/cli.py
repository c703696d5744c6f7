"""The `edgepack` command. The only place that turns EdgepackError into an exit code (docs/cli.md)."""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import threading
import traceback
from pathlib import Path

import click

from .errors import EdgepackError, ExitCode
from .paths import disk_full, disk_full_line


class Ctx:
    verbose = False
    process_entry = False  # run(): this is the edgepack process itself, not a caller of main() in-process


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks and backend messages.")
@click.version_option(package_name="edgepack")
@click.pass_context
def cli(ctx, verbose):
    """Ship trained models to edge devices.

    \b
    Example:
      edgepack build recipes/digits/recipe.yaml
      python -m edgepack build -h"""
    Ctx.verbose = verbose


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Bundle directory (default dist/NAME-VERSION).")
@click.option("--registry", help="Where to publish: layout:PATH (default $EDGEPACK_HOME/registry/NAME).")
@click.option("--no-publish", is_flag=True, help="Build, validate and sign, but do not publish.")
@click.option("--key", type=click.Path(path_type=Path), help="EC private key to sign with (PEM).")
@click.option("--target", "targets", multiple=True, help="Build only this target (repeatable).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Stage cache (default $EDGEPACK_HOME/cache).")
@click.option("--no-cache", is_flag=True, help="Re-run every stage.")
@click.option("--cache-store", metavar="URL", help="Shared cache store: oci://HOST[:PORT]/REPO or file:///PATH (default $EDGEPACK_CACHE_STORE).")
@click.option("--force", is_flag=True, help="Publish even if this version's tag exists (moves the tag).")
@click.option("--allow-partial", is_flag=True, help="Publish even when some targets failed (default: sign, don't publish).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Plan nodes run at once (default: the number of cores).")
@click.option("--executor", help="local (default), ray or ray://HOST:PORT (the edgepack[ray] extra).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the plan (nodes, dependencies, which are cached); run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines or bars; only the summary and the result.")
def build(recipes, output, registry, no_publish, key, targets, cache_dir, no_cache, cache_store, force, allow_partial, jobs, executor,
          plan_only, as_json, quiet):
    """Run recipes: convert, optimize, compile, validate, sign, publish. Several recipes run as one plan.

    \b
    Example:
      edgepack build recipes/digits/recipe.yaml --target ort-int8 --no-publish
      edgepack build recipes/*/recipe.yaml --jobs 2 --no-publish
      edgepack build recipes/digits --plan"""
    paused = Ctx.process_entry and gc.isenabled()
    if paused:  # start-up: see _startup_over
        gc.disable()
    from .cli_build import run_build
    from .pipeline import BuildOptions

    opts = BuildOptions(output=output, registry=registry, publish=not no_publish, key=key, targets=list(targets) or None,
                        cache_dir=cache_dir, use_cache=not no_cache, cache_store=cache_store, quiet=as_json or quiet,
                        force=force, allow_partial=allow_partial, jobs=jobs, executor=executor)
    run_build(list(recipes), opts, plan_only, as_json=as_json, loaded=_startup_over if paused else None)


def _startup_over() -> None:
    """The build command's start-up (imports, ~60 pydantic model classes, the loaded recipes) allocates ~50k
    objects that live until the process ends and almost no garbage; with the collector on, it walks them again
    and again (~0.08 s, 7% of a fully cached build). So, in the edgepack process only (run()), the collector is
    off until the recipes are loaded; then those objects move to the permanent generation (gc.freeze: never
    walked again) and collection resumes as normal for the build itself."""
    gc.freeze()
    gc.enable()


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--target", "targets", multiple=True, help="Check only this target (repeatable).")
def check(recipe, targets):
    """Check a recipe without building: fields, backends (pip extras), data a pass needs, the model's inputs,
    metrics and gates, devices (SSH devices are reached). Exit 2 on the first mistake.

    \b
    Example:
      edgepack check recipes/digits"""
    from .preflight import check_recipe
    from .recipe import load_recipe

    for line in check_recipe(load_recipe(recipe), list(targets) or None):
        click.echo(line)
    click.echo("OK: nothing found that would stop a build before it starts")


@cli.command()
def schema():
    """Print the recipe's JSON Schema.

    \b
    Example:
      edgepack schema > recipe.schema.json"""
    from .recipe import json_schema

    click.echo(json_schema())


@cli.command()
@click.argument("private_key", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--curve", type=click.Choice(["P-256", "P-384", "P-521"]), default="P-256")
@click.option("--force", is_flag=True, help="Overwrite an existing key.")
def keygen(private_key, curve, force):
    """Create an EC signing key pair (default $EDGEPACK_HOME/keys/signing-key.pem).

    \b
    Example:
      edgepack keygen keys/release.pem --curve P-384"""
    from .bundle.sign import keygen as make
    from .cache import edgepack_home
    from .pipeline import DEFAULT_KEY

    private_key = private_key or edgepack_home() / DEFAULT_KEY
    priv, pub = make(private_key, curve=curve, overwrite=force)
    click.echo(f"private key: {priv}\npublic key:  {pub}")


@cli.command()
@click.argument("bundle", required=False)
@click.option("--device", "-d", "devices", multiple=True, help="Device profile (path or name; repeatable: a fleet run). Default: local.")
@click.option("--target", "targets", multiple=True, help="Only this bundle target (repeatable).")
@click.option("--data", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Inputs .npz (default: synthetic).")
@click.option("--threads", type=int, help="Runtime threads (recorded).")
@click.option("--runs", type=int, help="Minimum timed runs.")
@click.option("--min-seconds", type=float, help="Minimum timed seconds.")
@click.option("--warmup-runs", type=int, help="Minimum warm-up runs.")
@click.option("--timeout", type=float, help="Per-device limit in seconds (default: each profile's transport.run_timeout_s).")
@click.option("--key", type=click.Path(path_type=Path), help="Public key to verify a pulled bundle (default: your own).")
@click.option("--compare", nargs=2, type=click.Path(dir_okay=False, exists=True, path_type=Path), metavar="A.json B.json",
              help="Print B/A latency ratios per target and device instead of running.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON on stdout.")
def bench(bundle, devices, targets, data, threads, runs, min_seconds, warmup_runs, timeout, key, compare, as_json):
    """Benchmark a bundle (folder or registry reference) on one or many devices (docs/benchmark-protocol.md).

    \b
    Example:
      edgepack bench dist/digits-1.0.0 -d local -d devices/pi4.yaml --min-seconds 2"""
    from . import bench as b

    if compare:
        cmp = b.compare(*compare)
        click.echo(json.dumps(cmp, indent=2) if as_json else b.format_compare(cmp))
        return
    if not bundle:
        raise click.UsageError("give a BUNDLE folder or registry reference (or --compare A.json B.json)")
    overrides = {"threads": threads, "runs": runs, "min_seconds": min_seconds, "warmup_runs": warmup_runs}
    report = b.run_bench(bundle, list(devices), list(targets) or None, data, overrides, key, timeout)
    click.echo(json.dumps(report, indent=2, default=str) if as_json else b.format_report(report))
    if not as_json:
        for f in report["failures"]:
            click.echo(f"failed: {f}", err=True)
    sys.exit(report["exit_code"])


@cli.group()
def devices():
    """Device profiles (devices/*.yaml).

    \b
    Example:
      edgepack devices check devices/pi4.yaml"""


@devices.command("check")
@click.argument("profile")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def devices_check(profile, as_json):
    """Reach a device: architecture, Python, runtimes, free memory and disk, which targets it can run.

    \b
    Example:
      edgepack devices check devices/pi4.yaml --json"""
    from .devices import load_profile
    from .devices.check import check_device, format_check

    info = check_device(load_profile(profile)[0])
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_check(info))


from .toolchains.cli import toolchains_group  # noqa: E402 - the group lives with its package

cli.add_command(toolchains_group)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # no pydantic plugins in the edgepack command (unless asked for): finding them scans every installed
    # package's entry points on the first model class, ~5% of a fully cached build (the Python API is unaffected)
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    if "--verbose" in argv or "-v" in argv:  # accepted anywhere on the line
        argv = ["--verbose"] + [a for a in argv if a not in ("--verbose", "-v")]
    try:
        cli.main(args=argv, prog_name="edgepack", standalone_mode=False)
    except EdgepackError as e:
        if Ctx.verbose:
            traceback.print_exc()
        line, code = _unexpected(e, argv) if disk_full(e) else (e.one_line(), e.exit_code)
        if "--json" in argv and not disk_full(e):  # a machine-readable error document on stdout as well
            click.echo(json.dumps({"status": "error", "exit_code": code, "error": line, "error_detail": e.fields()}, indent=2))
        click.echo(f"error: {line}", err=True)
        sys.exit(code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(ExitCode.BAD_INPUT)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # a bug in edgepack or a backend: one line unless --verbose
        if Ctx.verbose:
            traceback.print_exc()
        line, code = _unexpected(e, argv)
        click.echo(f"error: {line}", err=True)
        sys.exit(code)


from .cli_registry import copy, ls, publish, pull, verify  # noqa: E402 - the commands need the group above
from .cli_tools import completion, init  # noqa: E402

for _command in (verify, publish, pull, ls, copy, init, completion):
    cli.add_command(_command)

ARTIFACT_COMMANDS = {"verify", "pull", "publish", "copy", "ls", "bench"}  # what they read is a bundle / registry artifact


def _unexpected(e: BaseException, argv: list[str]) -> tuple[str, int]:
    """(one line, exit code) for errors no EdgepackError describes: a full disk, a hostile deeply nested document."""
    full = disk_full(e)
    if full is not None:
        return disk_full_line(full, argv), ExitCode.BAD_INPUT
    words = [a for a in argv if not a.startswith("-")]
    if isinstance(e, RecursionError):  # json / yaml parsers recurse per nesting level
        command, subject = (words + ["", ""])[:2]
        bad_artifact = command in ARTIFACT_COMMANDS
        return (f"{subject or command}: holds a document nested too deeply to read ({'a damaged or hostile artifact' if bad_artifact else 'bad input'})",
                ExitCode.VERIFICATION_FAILED if bad_artifact else ExitCode.BAD_INPUT)
    return f"internal error: {e.__class__.__name__}: {e} (rerun with --verbose for the traceback)", ExitCode.BUILD_ERROR


def run(argv=None) -> None:
    """The process entry (the ``edgepack`` script, ``python -m edgepack``): main(), then leave at once.

    Tearing the interpreter down (clearing ~550 modules, numpy's and pydantic-core's objects) costs ~0.25 s
    after the work is done: 20% of a fully cached build. Exit handlers still run (logging, temp folders,
    multiprocessing, Ray) and the standard streams are flushed; only the teardown is skipped. Not when a
    non-daemon thread still runs (its work would be cut off) or under ``python -X dev`` (its resource warnings
    come from the teardown). ``main()`` itself, which tests and scripts call in-process, returns as before."""
    code: str | int | None = 0
    Ctx.process_entry = True
    try:
        main(argv)
    except SystemExit as e:
        code = e.code
    if sys.flags.dev_mode or any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the status Python itself would give
            code = code or 120
    _flush_c_stdio()
    os._exit(code or 0)


def _flush_c_stdio() -> None:
    """A backend's buffered C stdio output (exit() flushes it, os._exit does not)."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:  # noqa: BLE001 - no C library to ask (not POSIX): nothing of it to flush
        pass


if __name__ == "__main__":
    run()
