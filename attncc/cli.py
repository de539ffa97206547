"""The ``attncc`` command line: compile | explain | check | specs | tune | cache.

Errors a user can cause print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from attncc.errors import AttnccError

DTYPES = ("fp16", "bf16", "fp32")
MAX_DIM = 2**31 - 1  # the kernels index with int32
INT64 = (-(2**63), 2**63 - 1)


class _Group(click.Group):
    """Every error a user can cause: one line on stderr, exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AttnccError as exc:
            click.echo(f"error: {_one_line(str(exc))}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:
            click.echo(f"error: {_one_line(exc.format_message())}", err=True)
            ctx.exit(2)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not B,H,M,N,D[,E] integers") from None
    if len(dims) not in (5, 6) or min(dims) < 1:
        raise click.BadParameter(f"'{text}' must be 5 or 6 positive integers: B,H,M,N,D[,E]")
    if max(dims) > MAX_DIM:
        raise click.BadParameter(f"'{text}': every size of B,H,M,N,D[,E] must be at most {MAX_DIM}")
    return dims


def parse_params(items: tuple[str, ...]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep:
            raise click.BadParameter(f"'{item}' is not NAME=VALUE")
        try:
            out[key] = int(val)
        except ValueError:
            try:
                out[key] = float(val)
            except ValueError:
                raise click.BadParameter(f"'{item}': value is not a number") from None
    return out


@click.group(cls=_Group)
@click.version_option(package_name="attncc")
def main() -> None:
    """attncc: compile attention specs into fused Triton kernels."""


@main.command()
def specs() -> None:
    """List the built-in spec library."""
    from attncc.spec.library import description, library

    for name, path in library().items():
        click.echo(f"{name:26s} {description(path)}")


@main.command()
@click.argument("spec")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="write the module here (missing folders are created)")
@click.option("--target", default=None, help="also compile ahead of time for this GPU, e.g. sm_90")
@click.option("--report", is_flag=True, help="with --target: print registers, spills, shared memory")
@click.option("--dtype", type=click.Choice(DTYPES), multiple=True, help="dtypes to report (default fp16, bf16)")
@click.option("--head-dim", type=int, multiple=True, help="head dims to report (default 64, 128)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
@click.option("--progress/--no-progress", default=None,
              help="progress of the stages and kernels on stderr (default: when stderr is a terminal)")
def compile(spec: str, output: Path | None, target: str | None, report: bool, dtype: tuple[str, ...],
            head_dim: tuple[int, ...], as_json: bool, progress: bool | None) -> None:
    """Compile SPEC (file or built-in name) to a standalone Triton module."""
    from attncc.compiler import generate
    from attncc.spec.loader import resolve

    if report and target is None:
        raise click.UsageError("--report needs --target, e.g. --target sm_90")
    show = sys.stderr.isatty() if progress is None else progress
    bar = _progress(f"compile {spec}", 2, show)
    try:
        spec_obj = resolve(spec)
        bar.update(1, "parsed")
        source = generate(spec_obj).source  # lowered and rendered; run only for --target
        bar.update(2, "lowered and rendered")
    finally:
        bar.close()  # ends the line on a terminal, also before an error message
    if output is not None:
        _write(output, source)
        if not as_json:
            click.echo(f"wrote {output} ({len(source.splitlines())} lines)", err=True)
    elif not report:
        click.echo(source)
    if target is not None:
        from attncc.runtime.api import load

        _report(load(spec_obj), target, dtype or ("fp16", "bf16"), head_dim or (64, 128), report, as_json, show)


def _progress(label: str, total: int, enabled: bool) -> Any:
    from attncc.autotune.progress import Progress

    return Progress(label, total, enabled=enabled)


def _write(output: Path, text: str) -> None:
    """Write the module; a path that cannot be written is a one-line error."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    except OSError as exc:
        raise click.BadParameter(f"cannot write {output}: {exc.strerror or exc}", param_hint="'-o'") from None


def _report(fn: Any, target: str, dtypes: tuple[str, ...], head_dims: tuple[int, ...], show: bool,
            as_json: bool, progress: bool) -> None:
    """Compile every kernel ahead of time for ``target``, one (dtype, head dim) at a time (with progress)."""
    from attncc.codegen.aot import format_reports
    from attncc.runtime.aot_spec import interpreting, report_kernels, report_many

    jobs = [(dt, hd) for dt in dtypes for hd in head_dims]
    kinds = fn.generated.lowered.schedule.kinds
    bar = _progress(f"aot {target}", len(jobs), progress)
    reports = []
    try:
        for i, (dt, hd) in enumerate(jobs):
            if interpreting():  # the persistent AOT worker process compiles (Triton cannot here)
                reports += report_many([(fn.spec, target, dt, hd, None, None, kinds)])
            else:
                reports += report_kernels(fn, target, dt, hd)
            bar.update(i + 1, f"{dt} d{hd}: {len(reports)} kernel(s)")
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
    elif show:
        click.echo(format_reports(reports))
    else:
        click.echo(f"compiled {len(reports)} kernel(s) for {target}", err=True)


@main.command()
@click.argument("spec")
@click.option("--shape", default=None, help="B,H,M,N,D[,E] for tile statistics")
@click.option("--param", "params", multiple=True, help="spec parameter NAME=VALUE")
@click.option("--capture", "captures", multiple=True,
              help="integer id capture NAME=runs:LEN[,LEN...][%K] for the tile statistics (e.g. doc=runs:1024)")
@click.option("--json", "as_json", is_flag=True)
@click.option("--plot", "plot", default=None, type=click.Path(dir_okay=False, writable=True),
              help="draw the forward kernel's block map (batch 0, head 0) to FILE.png (needs --shape, matplotlib)")
@click.option("--decode", "decode", default=None, metavar="LENGTHS",
              help="sequence lengths of a decode batch (e.g. 128,128,128,32768): its stream-K partition vs split-K")
@click.option("--heads", default="8,1", show_default=True, help="with --decode: query heads,key/value heads")
@click.option("--block-n", type=int, default=64, show_default=True, help="with --decode: key tile size")
@click.option("--programs", type=int, default=132, show_default=True, help="with --decode: programs (SMs)")
@click.option("--query-len", type=int, default=1, show_default=True, help="with --decode: new queries per sequence")
def explain(spec: str, shape: str | None, params: tuple[str, ...], captures: tuple[str, ...], as_json: bool,
            plot: str | None, decode: str | None, heads: str, block_n: int, programs: int, query_len: int) -> None:
    """Show SPEC's cascade, the passes applied, the schedule and tile statistics."""
    from attncc.compiler import generate
    from attncc.runtime.explain import explain as run_explain
    from attncc.runtime.explain import format_explain, run_captures
    from attncc.spec.loader import resolve

    _decode_options_need_decode(decode)
    spec_obj = resolve(spec)
    low = generate(spec_obj).lowered  # lowered and rendered, not run: torch only for shapes and captures
    dims = parse_shape(shape)
    values = _checked_params(spec_obj, parse_params(params))
    if captures and dims is None:
        raise click.UsageError("--capture needs --shape")
    tensors = run_captures(low.variant, captures, dims) if dims else {}
    info = run_explain(spec_obj, low, dims, values, captures=tensors)
    text = None if as_json else format_explain(info)
    if decode is not None:
        from attncc.passes.lowered import CallFacts
        from attncc.runtime.decode_explain import decode_partition, format_decode, parse_ints

        hq, hkv = parse_ints(heads, "--heads", 2)
        info["decode"] = decode_partition(parse_ints(decode, "--decode"), (hq, hkv), block_n, programs, query_len,
                                          generate(spec_obj, CallFacts(decode=True)).lowered, values)
        text = None if as_json else f"{text}\n\n{format_decode(info['decode'])}"
    click.echo(json.dumps(info, indent=2) if as_json else text)
    if plot is not None:
        if dims is None:
            raise click.UsageError("--plot needs --shape")
        from attncc.runtime.plot import plot_tile_map

        plot_tile_map(low.schedule.tile_map(low, dims, values, None, tensors), Path(plot), f"{spec_obj.name} {shape}")
        click.echo(f"wrote {plot}", err=True)


def _decode_options_need_decode(decode: str | None) -> None:
    """``--heads``, ``--block-n``, ``--programs`` and ``--query-len`` given without ``--decode``: a usage error."""
    ctx = click.get_current_context()
    given = [f"--{n.replace('_', '-')}" for n in ("heads", "block_n", "programs", "query_len")
             if ctx.get_parameter_source(n) != click.core.ParameterSource.DEFAULT]
    if decode is None and given:
        raise click.UsageError(f"{', '.join(given)} {'need' if len(given) > 1 else 'needs'} --decode LENGTHS")


def _checked_params(spec: Any, params: dict[str, float | int]) -> dict[str, float | int]:
    unknown = set(params) - set(spec.params)
    if unknown:
        raise click.BadParameter(f"unknown parameter(s) {sorted(unknown)}; {spec.name} takes {sorted(spec.params)}")
    for name, val in params.items():
        if spec.params[name].kind == "int" and not (isinstance(val, int) and INT64[0] <= val <= INT64[1]):
            raise click.BadParameter(f"--param {name}: an int64 integer is needed, got {val!r}")
        if not math.isfinite(val):
            raise click.BadParameter(f"--param {name}: the value must be finite, got {val!r}")
    return params


@main.command()
@click.argument("spec")
@click.option("--shape", default="1,2,77,77,32", show_default=True, help="B,H,M,N,D[,E]")
@click.option("--dtype", type=click.Choice(("fp16", "fp32")), default="fp32", show_default=True)
@click.option("--param", "params", multiple=True, help="spec parameter NAME=VALUE")
@click.option("--json", "as_json", is_flag=True)
def check(spec: str, shape: str, dtype: str, params: tuple[str, ...], as_json: bool) -> None:
    """Run SPEC's kernel here (interpreter without GPU) against the spec's dense reference."""
    from attncc.runtime.check import run_check
    from attncc.spec.loader import resolve

    dims = parse_shape(shape)
    assert dims is not None
    result = run_check(spec, dims, dtype, _checked_params(resolve(spec), parse_params(params)))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{result['spec']} {result['dtype']} shape {result['shape']} on {result['device']}: "
                   f"output max err {result['out_err']:.3g} (torch {dtype} {result['torch_out_err']:.3g}), "
                   f"{'final state' if result.get('recurrence') else 'lse'} max err {result['lse_err']:.3g} -> "
                   f"{'PASS' if result['ok'] else 'FAIL'}")
    if not result["ok"]:
        sys.exit(1)


def _tunable(spec: str, kind: str) -> Any:
    """``attncc tune``'s resolver: the spec's compiled kernels of ``kind`` (see attncc.runtime.tunable)."""
    from attncc.runtime.tunable import tunable_for_spec

    return tunable_for_spec(spec, kind)


def _register_autotune() -> None:
    from attncc.autotune.cli import cache, register_resolver, tune

    register_resolver(_tunable)
    main.add_command(tune)
    main.add_command(cache)


_register_autotune()


if __name__ == "__main__":
    main()
