"""Spec expressions: the whitelist parser (semantics and rejections) and errors from traced Python mods."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sympy as sp
import torch

import attncc
from attncc.errors import SpecError
from attncc.ir import expr as E
from attncc.spec.loader import load_text
from attncc.spec.parser import Location, Scope, parse_expression

LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>\S.*)$")

WINDOW = sp.Symbol("window", integer=True)
NAMES = {**E.INDEX_SYMBOLS, **E.SIZE_SYMBOLS, "scale": E.scale, "score": E.score, "window": WINDOW}
SCOPE = Scope(NAMES, {"bias": 2, "slopes": 1, "lens": 1}, frozenset({"lens"}))
LOC = Location("f.toml", 7, 12)  # the expression starts at 0-based column 12 of line 7


def parse(text: str) -> sp.Basic:
    return parse_expression(text, SCOPE, LOC)


def parse_error(text: str) -> tuple[int, int, str]:
    with pytest.raises(SpecError) as info:
        parse(text)
    msg = str(info.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    mo = LOCATED.match(msg)
    assert mo is not None, f"no file:line:col in {msg!r}"
    assert mo["file"] == "f.toml"
    return int(mo["line"]), int(mo["col"]), mo["msg"]


def evaluate(expr: sp.Basic, **values: int) -> object:
    symbols = {**NAMES}
    out = expr.subs({symbols[k]: v for k, v in values.items()})
    if isinstance(out, sp.logic.boolalg.BooleanAtom):
        return bool(out)
    return out


# --- semantics: the lowering agrees with Python on integers ------------------------------------------------

# (spec text, the same in Python over m, n, window)
SEMANTICS = [
    ("(m - n) // 4", lambda m, n, w: (m - n) // 4),
    ("(m - n) % 3", lambda m, n, w: (m - n) % 3),
    ("(n - m) % 5 == 0", lambda m, n, w: (n - m) % 5 == 0),
    ("abs(m - n) <= window", lambda m, n, w: abs(m - n) <= w),
    ("min(m, n) * 2 + max(m, n)", lambda m, n, w: min(m, n) * 2 + max(m, n)),
    ("clamp(m - n, -2, 3)", lambda m, n, w: min(max(m - n, -2), 3)),
    ("where(m > n, 1, 2)", lambda m, n, w: 1 if m > n else 2),
    ("10 if n <= m else -10", lambda m, n, w: 10 if n <= m else -10),
    ("m ** 2 - -n", lambda m, n, w: m**2 + n),
    ("n < m <= n + window", lambda m, n, w: n < m <= n + w),
    ("not (m < n)", lambda m, n, w: not m < n),
    ("(m < n) and (n < 5) or m == 0", lambda m, n, w: (m < n and n < 5) or m == 0),
    ("(n <= m) & ((n < 2) | (m - n < window))", lambda m, n, w: n <= m and (n < 2 or m - n < w)),
    ("~(n > m) & (m != 3)", lambda m, n, w: not n > m and m != 3),
    ("floor((m + 1) / 2) + ceil(n / 3)", lambda m, n, w: (m + 1) // 2 + -(-n // 3)),
    ("sign(m - n) * 7", lambda m, n, w: ((m > n) - (m < n)) * 7),
]


@pytest.mark.parametrize("text,python", SEMANTICS, ids=[t for t, _ in SEMANTICS])
def test_expression_semantics(text: str, python) -> None:
    expr = parse(text)
    for m in range(0, 9):
        for n in range(0, 9):
            for w in (0, 2, 5):
                got = evaluate(expr, m=m, n=n, window=w)
                want = python(m, n, w)
                assert got == want, f"{text} at m={m} n={n} window={w}: {got} != {want}"


def test_score_functions() -> None:
    expr = parse("50 * tanh(score / 50) + exp(0) - log(1) + sqrt(4) + sigmoid(0)")
    assert abs(float(expr.subs(E.score, 3.0)) - (50 * torch.tanh(torch.tensor(3.0 / 50)).item() + 3.5)) < 1e-6


def test_capture_loads() -> None:
    expr = parse("score + bias[h, clamp(m - n, -4, 4) + 4] * slopes[h]")
    loads = E.loads(expr)
    assert sorted(ld.tensor_name for ld in loads) == ["bias", "slopes"]
    lens = parse("n < lens[b]")
    assert [type(ld) for ld in E.loads(lens)] == [E.IntLoad]


def test_constants() -> None:
    assert parse("inf") == sp.oo
    assert parse("True") is sp.true
    assert parse("-inf") == -sp.oo


# --- rejections: one line, file:line:col, and the column of the offending node -----------------------------

REJECTED = [
    ("m + foo", "foo", "unknown name"),
    ("score + sin(m)", "sin", "unknown function"),
    ("score.__class__", "score", "not allowed"),
    ("__import__('os').system('x')", "__import__", "plain function call"),
    ("lambda: 1", "lambda", "not allowed"),
    ("(lambda x: x)(score)", "(lambda", "plain function call"),
    ("__builtins__", "__builtins__", "not allowed"),
    ("_private + 1", "_private", "not allowed"),
    ("score + 'a'", "'a'", "not a number"),
    ("max(score, 0, key=1)", "max", "keyword"),
    ("max(*[score, 1])", "max", "argument"),
    ("[x for x in (1, 2)]", "[x", "not allowed"),
    ("{'a': 1}", "{", "not allowed"),
    ("(y := 3)", "y :=", "not allowed"),
    ("f'{score}'", "f'", "not allowed"),
    ("score if score else 0", "score if", "condition"),
    ("m[0]", "m[0]", "captured"),
    ("bias[h]", "bias[h]", "2 index"),
    ("slopes[h, m]", "slopes[h, m]", "1 index"),
    ("slopes + score", "slopes", "indexed"),
    ("score @ score", "score @", "not allowed"),
    ("score << 2", "score <<", "integer operands"),
    ("n in (1, 2)", "(1, 2)", "not allowed"),
    ("n not in (m, 1)", "(m, 1)", "not allowed"),
    ("m is n", "m is", "not allowed"),
    ("clamp(m, 1)", "clamp", "argument"),
    ("abs()", "abs", "argument"),
    ("score +", "", "syntax"),
    ("getattr(score, 'real')", "getattr", "unknown function"),
    ("open('/etc/passwd')", "open", "unknown function"),
    ("eval('1')", "eval", "unknown function"),
    ("score.exp()", "score.exp", "plain function"),
    ("(m > 1) & 3", "(m > 1) & 3", "condition and a number"),
]


@pytest.mark.parametrize("text,at,words", REJECTED, ids=[t for t, _, _ in REJECTED])
def test_rejected_expression(text: str, at: str, words: str) -> None:
    line, col, msg = parse_error(text)
    assert line == 7, msg
    if at:  # the error points at the offending node: column 12 (0-based start) + its offset + 1
        assert col == 12 + text.index(at) + 1, f"{text!r}: column {col}, expected {12 + text.index(at) + 1} ({msg})"
    else:
        assert 13 <= col <= 13 + len(text), msg
    assert words.strip(), f"{text!r}: an empty fragment checks nothing (bad test)"
    assert words.lower() in msg.lower(), f"{text!r}: {msg!r} does not mention {words!r}"


def test_multi_line_expression_rejected() -> None:
    line, _, msg = parse_error("score +\n1")
    assert line == 7 and "one line" in msg


def test_score_is_not_visible_in_masks() -> None:
    scope = Scope({k: v for k, v in NAMES.items() if k != "score"})
    with pytest.raises(SpecError, match="score"):
        parse_expression("score > 0", scope, LOC)


# --- nothing is ever executed ----------------------------------------------------------------------------

INJECTIONS = [
    "__import__('pathlib').Path('{p}').touch()",
    "__import__('os').system('touch {p}')",
    "open('{p}', 'w')",
    "(lambda: open('{p}', 'w'))()",
    "[open('{p}', 'w') for _ in (1,)]",
    "exec(\"open('{p}', 'w')\")",
    "().__class__.__base__.__subclasses__()",
    "{{}}.__class__",
]


@pytest.mark.parametrize("template", INJECTIONS)
@pytest.mark.parametrize("where", ["modify", "mask", "score", "hk"])
def test_injection_is_rejected_and_not_executed(tmp_path: Path, template: str, where: str) -> None:
    target = tmp_path / "pwned"
    inj = template.format(p=target).replace('"', '\\"')
    modify, mask, score, indices = "score", "n <= m", "q[b,h,m,d] * k[b,h,n,d] * scale", ""
    kv = "h"
    if where == "modify":
        modify = f"score + {inj}"
    elif where == "mask":
        mask = f"(n <= m) & ({inj})"
    elif where == "score":
        score = f"q[b,h,m,d] * k[b,h,n,d] * {inj}"
    else:
        indices, kv = f'[indices]\nhk = "{inj}"\n', "hk"
    text = (f'name = "x"\n[inputs]\nq = "b h m d"\nk = "b {kv} n d"\nv = "b {kv} n e"\n{indices}'
            f'[cascade]\nscore = "{score.replace("k[b,h,", f"k[b,{kv},")}"\nmodify = "{modify}"\n'
            f'mask = "{mask}"\noutput = "p[b,h,m,n] * v[b,{kv},n,e]"\n')
    with pytest.raises(SpecError) as info:
        load_text(text, "evil.toml")
    msg = str(info.value)
    assert "\n" not in msg and LOCATED.match(msg), msg
    expected_line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(f"{where} ="))
    assert int(LOCATED.match(msg)["line"]) == expected_line, msg
    assert not target.exists(), f"spec text was executed: {target} created"


# --- traced Python mods: errors are one-line SpecErrors too ---------------------------------------------------

def _trace_error(score_mod=None, mask_mod=None) -> str:
    with pytest.raises(SpecError) as info:
        q = torch.zeros(1, 1, 4, 16)
        if mask_mod is not None:
            attncc.create_block_mask(mask_mod, 1, 1, 4, 4)
        attncc.flex_attention(q, q, q, score_mod=score_mod)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert __file__ in msg or Path(__file__).name in msg, f"error does not name the mod's file: {msg}"
    return msg


def test_traced_data_dependent_branch() -> None:
    def branchy(b, h, q_idx, kv_idx):
        if q_idx > kv_idx:
            return True
        return False
    assert "control flow" in _trace_error(mask_mod=branchy)


def test_traced_unsupported_torch_function() -> None:
    def sine(score, b, h, q_idx, kv_idx):
        return torch.sin(score)
    assert "sin" in _trace_error(score_mod=sine)


def test_traced_score_mod_returning_condition() -> None:
    def cond(score, b, h, q_idx, kv_idx):
        return score > 0
    assert "condition" in _trace_error(score_mod=cond)


def test_traced_mask_returning_number() -> None:
    def number(b, h, q_idx, kv_idx):
        return q_idx - kv_idx
    assert "condition" in _trace_error(mask_mod=number)


def test_traced_unindexed_capture() -> None:
    table = torch.ones(4)

    def whole(score, b, h, q_idx, kv_idx):
        return score + table
    assert "index" in _trace_error(score_mod=whole)


def test_traced_sliced_capture() -> None:
    table = torch.ones(4, 4)

    def sliced(score, b, h, q_idx, kv_idx):
        return score + table[h, :].sum()
    _trace_error(score_mod=sliced)
