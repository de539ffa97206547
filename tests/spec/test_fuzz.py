"""Fuzzing the spec language (hypothesis): no traceback, no hang, no broken module, no code run.

Generated spec files (grammar in ``fuzz_grammar.py``: expressions over indices, sizes,
params and captures with every operator and function, hostile constants, powers and
nesting, hostile names, broken TOML structure, code payloads) go through
``load_text`` -> ``generate`` -> ``compile``/``exec`` of the generated module.  Each one must

* be rejected with a one-line ``SpecError`` carrying ``fuzz.toml:line:col``, or
* give a module that compiles, executes and references no undefined name (a bare
  ``nan``, a leaked internal symbol);
* take at most 5 s (a hang detector, not a performance test);
* never create the canary file that every payload tries to write.

A sample of the accepted "tame" specs also runs in the interpreter against a dense
reference computed from the grammar's own torch semantics (never attncc's evaluator).

CI runs 2,000+ generated specs.  For a longer local run::

    ATTNCC_FUZZ_EXAMPLES=50000 ATTNCC_FUZZ_RUNS=200 python -m pytest -q -p no:cacheprovider tests/spec/test_fuzz.py
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import DEVICE, SMALL_TILES
from fuzz_grammar import X, expressions, hostile_expressions, masks, modifications, tame_masks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from reference import check_attention, masked_softmax_attention

import attncc
from attncc.cli import main
from attncc.compiler import generate
from attncc.errors import SpecError
from attncc.spec.loader import load_text

# Hypothesis keeps caches and patches of failing examples: in a temporary directory, never the checkout.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="attncc-fuzz-hypothesis-"))

EXAMPLES = int(os.environ.get("ATTNCC_FUZZ_EXAMPLES", "2000"))
RUNS = int(os.environ.get("ATTNCC_FUZZ_RUNS", "20"))
HANG_S = 5.0
FILE = "fuzz.toml"
LOCATED = re.compile(rf"^{re.escape(FILE)}:\d+:\d+: \S")
CANARY = Path(os.environ.get("ATTNCC_FUZZ_CANARY", "")) if os.environ.get("ATTNCC_FUZZ_CANARY") else None


def fuzz_settings(share: float) -> settings:
    return settings(max_examples=max(1, int(EXAMPLES * share)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private kernel cache and canary path."""
    global CANARY
    old = os.environ.get("ATTNCC_CACHE_DIR")
    os.environ["ATTNCC_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    CANARY = tmp_path_factory.mktemp("canary") / "CANARY"
    yield
    if old is None:
        os.environ.pop("ATTNCC_CACHE_DIR", None)
    else:
        os.environ["ATTNCC_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _fresh_canary() -> None:
    """A canary written by one test fails that test only."""
    assert CANARY is not None
    CANARY.unlink(missing_ok=True)


def payload(text: str) -> str:
    assert CANARY is not None
    return text.replace("CANARY", str(CANARY).replace("\\", "/"))


# --- spec files -------------------------------------------------------------------------------

def toml_str(text: str) -> str:
    """A TOML basic string holding ``text`` exactly."""
    return json.dumps(text, ensure_ascii=False)


DECLS = {
    "bias": 'bias = { dims = "h", dtype = "float32" }',
    "table": 'table = { dims = "h r", dtype = "float32" }',
    "lens": 'lens = { dims = "b", dtype = "int32" }',
}
HEAD_MAPS = ["h // (H // HK)", "0", "h % HK", "HK - 1", "min(h, HK - 1)", "h // 2", "h / 2", "score", "hk",
             "h // 0", "9**9**9**9", "h +", "(" * 200 + "h" + ")" * 200]


def spec_text(modify: str, mask: str, caps: frozenset[str] = frozenset(), *, gqa: str | None = None,
              params: str = 'w = { type = "int", default = 3 }\nalpha = 0.5', captures: str | None = None,
              description: str = "fuzzed spec", extra: str = "") -> str:
    hk = "hk" if gqa is not None else "h"
    lines = [f"name = {toml_str('fuzz')}", f"description = {toml_str(description)}", extra,
             "[inputs]", 'q = "b h m d"', f'k = "b {hk} n d"', f'v = "b {hk} n e"']
    if gqa is not None:
        lines += ["[indices]", f"hk = {toml_str(gqa)}"]
    lines += ["[params]", params, "[captures]"]
    lines += [captures] if captures is not None else [DECLS[c] for c in sorted(caps)]
    lines += ["[cascade]", f'score = "q[b,h,m,d] * k[b,{hk},n,d] * scale"', f"modify = {toml_str(modify)}",
              f"mask = {toml_str(mask)}", 'normalize = "softmax(n)"', f'output = "p[b,h,m,n] * v[b,{hk},n,e]"']
    return "\n".join(lines) + "\n"


# --- the pipeline under test -----------------------------------------------------------------

def unresolved_names(source: str) -> list[str]:
    """Names the module reads but nothing defines (module, function or builtin): a NameError waiting."""
    tree = ast.parse(source)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            defined.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.alias):
            defined.add((node.asname or node.name).split(".")[0])
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return sorted(used - defined)


def through_pipeline(text: str) -> str:
    """Load, generate and execute; return "accepted" or "rejected", raise AssertionError otherwise."""
    assert CANARY is not None
    start = time.perf_counter()
    try:
        spec = load_text(text, FILE)
    except SpecError as exc:
        msg = str(exc)
        assert len(msg.splitlines()) == 1, f"error is not one line: {msg!r}\n--- spec:\n{text}"
        assert LOCATED.match(msg), f"error without {FILE}:line:col: {msg!r}\n--- spec:\n{text}"
        outcome = "rejected"
    except Exception as exc:  # noqa: BLE001 - the point: anything else is a failure
        raise AssertionError(f"traceback ({type(exc).__name__}: {exc!s:.300})\n--- spec:\n{text}") from exc
    else:
        source = generate(spec).source
        code = compile(source, "<fuzz module>", "exec")
        exec(code, {"__name__": "attncc_fuzz_module"})  # noqa: S102 - text attncc generated
        missing = unresolved_names(source)
        assert not missing, f"generated module reads undefined name(s) {missing}\n--- spec:\n{text}"
        outcome = "accepted"
    elapsed = time.perf_counter() - start
    assert elapsed <= HANG_S, f"took {elapsed:.1f} s (> {HANG_S} s)\n--- spec:\n{text}"
    assert not CANARY.exists(), f"code from the spec ran (canary written)\n--- spec:\n{text}"
    return outcome


# --- generated specs --------------------------------------------------------------------------

NAMES = ["w", "alpha", "ｗ", "S", "P", "L", "O", "MX", "OS", "LSE", "P_num", "S_mod", "tl", "triton", "torch",
         "math", "nan", "inf", "pi", "exp", "where", "if", "def", "None", "True", "q", "k", "v", "p", "config",
         "captures", "scale", "score", "B", "hk", "x_ptr", "cg0", "dload_0", "_x", "stride", "seg_lo", "a" * 70,
         "bias", "lens", "offs_m", "acc", "sm_scale", "HEAD_D", "BLOCK_M", "float", "range", "e", "é", "a b", "",
         "x'); open('CANARY','w'); ('", 'x"""', "x\\n", "x\nimport os"]
PARAM_VALUES = ["1", "0.5", "-3", "nan", "inf", "-inf", "99999999999999999999", "9223372036854775807", "true",
                '"x"', "[1]", "{ type = \"int\", default = 1.5 }", "{ type = \"float\", default = 1 }",
                "{ type = \"complex\", default = 1 }", "{ type = \"int\", default = 2, doc = 3 }", "1e308"]
CAP_DECLS = ['{ dims = "h" }', '{ dims = "" }', '{ dims = "a b c d e f g h i j" }', '{ dims = "h", dtype = "x" }',
             "1", '{ dims = 3 }', '{ dims = "h", doc = "open(\'CANARY\', \'w\')" }', '{ dims = "h r" }']
BROKEN = ["normalize = 1", "normalize = \"softmax(m)\"", "modify = [1, 2]", "mask = 3", "score = \"q * k\"",
          "output = \"\"", "modify = { a = 1 }", "unknown = 1"]


@st.composite
def generated_specs(draw: st.DrawFn) -> str:
    """A spec from the grammar: valid, tame, invalid or hostile (see the module docstring)."""
    choice = draw(st.integers(0, 9))
    mod: X = draw(modifications(typed=choice != 3))
    mask: X = draw(masks(typed=choice != 4))
    modify_text, mask_text = mod.text, mask.text
    if choice == 0:
        modify_text = payload(draw(hostile_expressions()))
    elif choice == 1:
        mask_text = payload(draw(hostile_expressions()))
    elif choice == 2:
        modify_text = draw(expressions().map(lambda x: f"score + {x.text}"))  # any kind: ints, bools, ...
    gqa = draw(st.sampled_from([None] * 12 + ["h // (H // HK)"] * 4 + HEAD_MAPS))
    return spec_text(modify_text, mask_text, mod.caps | mask.caps, gqa=gqa)


def _ident(name: str) -> str:
    return name if name.isidentifier() else "w"


@st.composite
def named_specs(draw: st.DrawFn) -> str:
    """Hostile names and values for params and captures, used by the expressions."""
    pname = payload(draw(st.sampled_from(NAMES)))
    cname = payload(draw(st.sampled_from(NAMES)))
    pval = payload(draw(st.sampled_from(PARAM_VALUES)))
    cdecl = payload(draw(st.sampled_from(CAP_DECLS)))
    use_cap = f"{_ident(cname)}[h]" if "r" not in cdecl else f"{_ident(cname)}[h, m % 3]"
    modify = f"score + {_ident(pname)} * {use_cap}"
    return spec_text(modify, "n <= m", params=f"{toml_str(pname)} = {pval}",
                     captures=f"{toml_str(cname)} = {cdecl}")


@st.composite
def broken_specs(draw: st.DrawFn) -> str:
    """Valid specs with one line replaced, deleted or duplicated, or TOML nested very deeply."""
    text = spec_text("score + alpha * bias[h]", "n <= m", frozenset({"bias"}))
    lines = text.splitlines()
    kind = draw(st.integers(0, 3))
    i = draw(st.integers(0, len(lines) - 1))
    if kind == 0:
        lines[i] = draw(st.sampled_from(BROKEN))
    elif kind == 1:
        del lines[i]
    elif kind == 2:
        lines.insert(i, lines[i])
    else:
        depth = draw(st.sampled_from([10, 1000, 100_000]))
        lines.insert(i, "x = " + "[" * depth + "]" * depth)
    return "\n".join(lines) + "\n"


@given(generated_specs())
@fuzz_settings(0.75)
def test_generated_specs(text: str) -> None:
    through_pipeline(text)


@given(named_specs())
@fuzz_settings(0.15)
def test_hostile_names(text: str) -> None:
    through_pipeline(text)


@given(broken_specs())
@fuzz_settings(0.1)
def test_broken_structure(text: str) -> None:
    through_pipeline(text)


def test_the_grammar_reaches_both_outcomes() -> None:
    """The fuzzer is worth something only if it produces accepted and rejected specs alike."""
    seen: dict[str, int] = {"accepted": 0, "rejected": 0}

    @given(generated_specs())
    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def count(text: str) -> None:
        seen[through_pipeline(text)] += 1

    count()
    assert seen["accepted"] >= 40 and seen["rejected"] >= 20, seen


# --- description payloads (the generated module's docstring) ----------------------------------

DESCRIPTIONS = ['x"""\nimport os; open(\'CANARY\', \'w\')\n"""', "\\x", "\\N", "\x00", "{{HEADER}}", "{{MOD_EXPR}}",
                "'''", '"', "\\", "\r\nraise SystemExit", "\u2028import os", "é ｗ 🙂"]


@pytest.mark.parametrize("description", [pytest.param(d, id=f"desc{i}") for i, d in enumerate(DESCRIPTIONS)])
def test_description_payloads_never_run(description: str) -> None:
    assert through_pipeline(spec_text("score", "n <= m", description=payload(description))) == "accepted"


# --- the CLI: exit code 2 and one line ---------------------------------------------------------

@pytest.mark.parametrize("modify", [pytest.param(m, id=f"cli{i}") for i, m in enumerate(
    ["score + 9**9**9**9", "score % 0", "(-2)**score", "(" * 300 + "score" + ")" * 300, "score + " + "9" * 5000])])
def test_cli_rejects_with_exit_2_and_one_line(tmp_path: Path, modify: str) -> None:
    path = tmp_path / FILE
    path.write_text(spec_text(modify, "n <= m"))
    for command in (["compile", str(path)], ["explain", str(path)]):
        res = CliRunner().invoke(main, command)
        assert res.exit_code == 2, f"{command}: exit {res.exit_code}: {res.output}"
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(rf"{FILE}:\d+:\d+: ", lines[0]), f"{command}: {res.stderr!r}"


# --- accepted specs, run against a dense reference ---------------------------------------------

@st.composite
def tame_specs(draw: st.DrawFn) -> tuple[X, X, bool, tuple[int, int], int]:
    mod = draw(modifications().filter(lambda x: x.tame and len(x.text) >= 40))
    mask = draw(tame_masks() if draw(st.integers(0, 3)) else masks().filter(lambda x: x.tame))
    return mod, mask, draw(st.booleans()), draw(st.sampled_from([(1, 1), (7, 23), (23, 7), (33, 33)])), \
        draw(st.integers(-2, 6))


def _env(q: torch.Tensor, k: torch.Tensor, scale: float, dtype: torch.dtype, params: dict, caps: dict) -> dict:
    B, H, M, _ = q.shape
    N = k.shape[2]
    kk = k.repeat_interleave(H // k.shape[1], dim=1).to(dtype)
    return {"b": torch.arange(B).view(B, 1, 1, 1), "h": torch.arange(H).view(1, H, 1, 1),
            "m": torch.arange(M).view(1, 1, M, 1), "n": torch.arange(N).view(1, 1, 1, N),
            "B": B, "H": H, "M": M, "N": N, "dtype": dtype, "params": params, "caps": caps,
            "score": (q.to(dtype) @ kk.transpose(-1, -2)) * scale}


def dense(mod: X, mask: X, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dtype: torch.dtype,
          params: dict, caps: dict) -> tuple[torch.Tensor, torch.Tensor]:
    env = _env(q, k, scale, dtype, params, caps)
    s = mod.ev(env).to(dtype).expand(env["score"].shape)
    keep = torch.as_tensor(mask.ev(env)).bool().expand(s.shape)
    vv = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1).to(dtype)
    return masked_softmax_attention(s, keep, vv)


@given(tame_specs())
@settings(max_examples=RUNS, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_accepted_specs_match_a_dense_reference(case: tuple[X, X, bool, tuple[int, int], int]) -> None:
    mod, mask, gqa, (M, N), w = case
    text = spec_text(mod.text, mask.text, mod.caps | mask.caps, gqa="h // (H // HK)" if gqa else None)
    assert through_pipeline(text) == "accepted", text
    fn = attncc.load(load_text(text, FILE))
    gen = torch.Generator().manual_seed(M * 100 + N)
    B, H, HK, D = 2, 4, 2 if gqa else 4, 16
    q, k, v = (torch.randn(*s, generator=gen) for s in ((B, H, M, D), (B, HK, N, D), (B, HK, N, D)))
    caps = {"bias": torch.randn(H, generator=gen), "table": torch.randn(H, 5, generator=gen),
            "lens": torch.randint(0, N + 1, (B,), generator=gen, dtype=torch.int32)}
    caps = {name: t for name, t in caps.items() if name in mod.caps | mask.caps}
    params = {"w": w, "alpha": 0.5}
    got = fn(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), return_lse=True, config=SMALL_TILES, w=w,
             **{n: t.to(DEVICE) for n, t in caps.items()})
    golden = dense(mod, mask, q, k, v, D**-0.5, torch.float64, params, caps)
    same = dense(mod, mask, q, k, v, D**-0.5, torch.float32, params, caps)
    check_attention(f"fuzz modify={mod.text!r} mask={mask.text!r} M={M} N={N}", (got[0].cpu(), got[1].cpu()),
                    golden, same, torch.float32)
