"""Loading spec files: the built-in library, and one-line ``file:line:col`` errors for malformed specs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import attncc
from attncc.errors import SpecError
from attncc.spec import loader
from attncc.spec.loader import library, load_text, resolve

REPO_SPECS = Path(__file__).resolve().parents[2] / "specs"

BASE = """\
name = "x"
description = "test spec"

[inputs]
q = "b h m d"
k = "b h n d"
v = "b h n e"
{extra}
[cascade]
score = "q[b,h,m,d] * k[b,h,n,d] * scale"
modify = {modify}
mask = {mask}
normalize = "softmax(n)"
output = "p[b,h,m,n] * v[b,h,n,e]"
"""
MODIFY_LINE, MASK_LINE = 11, 12  # with an empty {extra}; each extra line shifts them down


def spec_text(modify: str = '"score"', mask: str = '"n <= m"', extra: str = "") -> str:
    return BASE.format(modify=modify, mask=mask, extra=extra)


LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>\S.*)$")


def spec_error(text: str, file: str = "x.toml") -> tuple[int, int, str]:
    """Load ``text``; it must fail with a one-line SpecError located at file:line:col."""
    with pytest.raises(SpecError) as info:
        load_text(text, file)
    msg = str(info.value)
    assert "\n" not in msg, f"SpecError is not one line: {msg!r}"
    mo = LOCATED.match(msg)
    assert mo is not None, f"SpecError does not start with file:line:col: {msg!r}"
    assert mo["file"] == file, msg
    return int(mo["line"]), int(mo["col"]), mo["msg"]


def line_of(text: str, needle: str) -> int:
    """1-based number of the first line of ``text`` that contains ``needle``."""
    return next(i for i, ln in enumerate(text.splitlines(), start=1) if needle in ln)


def col_of(text: str, line: int, needle: str) -> int:
    """1-based column of ``needle`` on 1-based ``line`` of ``text``."""
    return text.splitlines()[line - 1].index(needle) + 1


def test_error_classes_are_exported() -> None:
    import attncc.errors as errors
    for name in ("AttnccError", "SpecError", "InputError", "CompileError"):
        assert getattr(attncc, name, None) is getattr(errors, name), f"attncc.{name} is not exported"


# --- the built-in library --------------------------------------------------------------------------

def test_library_lists_the_spec_files() -> None:
    files = {p.stem for p in REPO_SPECS.glob("*.toml")}
    assert files, "no spec files found"
    assert set(library()) == files


@pytest.mark.parametrize("name", sorted(library()))
def test_builtin_spec_loads(name: str) -> None:
    spec = resolve(name)
    assert spec.name == name, f"{library()[name]} declares name '{spec.name}'"
    assert spec.description
    by_path = resolve(str(library()[name]))
    assert by_path.content_hash == spec.content_hash
    assert attncc.load(name).spec.content_hash == spec.content_hash


def test_builtin_gqa_spec_has_head_map() -> None:
    assert resolve("gqa").is_gqa
    assert not resolve("causal").is_gqa


def test_builtin_params_and_captures() -> None:
    sw = resolve("sinks_window")
    assert {p.name: (p.kind, p.default) for p in sw.params.values()} == {"sinks": ("int", 4), "window": ("int", 256)}
    assert resolve("softcap").params["cap"].kind == "float"
    rel = resolve("relative_bias")
    assert rel.captures["bias"].ndim == 2
    assert resolve("cross_attention").captures["kv_lens"].dtype == "int32"


def test_unknown_builtin_name() -> None:
    with pytest.raises(SpecError) as info:
        resolve("no_such_spec")
    msg = str(info.value)
    assert "\n" not in msg and "no_such_spec" in msg and "causal" in msg


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        resolve(str(tmp_path / "absent.toml"))
    assert "\n" not in str(info.value) and "absent.toml" in str(info.value)


def test_load_from_file_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(spec_text(mask='"n <= m - 2"'))
    spec = attncc.load(str(path)).spec
    assert spec.name == "x" and str(spec.mask) != "True"


def test_errors_in_a_file_name_that_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    text = spec_text(mask='"n <= wndow"')
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        resolve(str(path))
    assert str(info.value).startswith(f"{path}:{MASK_LINE}:{col_of(text, MASK_LINE, 'wndow')}: ")


def test_valid_text_loads() -> None:
    spec = load_text(spec_text(), "x.toml")
    assert spec.name == "x" and spec.params == {} and spec.captures == {}


def test_content_hash_follows_the_expressions() -> None:
    a = load_text(spec_text(mask='"n <= m"'), "a.toml")
    b = load_text(spec_text(mask='"n<=m"'), "b.toml")
    c = load_text(spec_text(mask='"n < m"'), "c.toml")
    d = load_text(spec_text(mask='"n <= m"').replace("description = \"test spec\"", "description = \"other\""),
                  "d.toml")
    assert a.content_hash == b.content_hash
    assert a.content_hash != c.content_hash
    assert a.content_hash != d.content_hash, "the description is printed into the module: it is part of the key"
    assert a.tuning_hash == d.tuning_hash, "tuned configs do not depend on the description"
    assert a.tuning_hash != c.tuning_hash


# --- malformed specs -----------------------------------------------------------------------------------

def test_malformed_toml() -> None:
    text = spec_text(mask='"n <= m')  # unterminated string
    line, col, msg = spec_error(text)
    assert line == MASK_LINE and "TOML" in msg


def test_malformed_toml_duplicate_key() -> None:
    text = spec_text() + 'mask = "True"\n'
    line, _, msg = spec_error(text)
    assert line == len(text.splitlines()) and "TOML" in msg


def test_unknown_top_level_key() -> None:
    text = 'colour = "blue"\n' + spec_text()
    line, _, msg = spec_error(text)
    assert line == 1 and "colour" in msg


def test_unknown_top_level_table() -> None:
    text = spec_text() + "\n[extras]\nx = 1\n"
    line, _, msg = spec_error(text)
    assert "extras" in msg
    assert line == text.splitlines().index("[extras]") + 1


def test_unknown_cascade_key() -> None:
    text = spec_text().replace('normalize = "softmax(n)"', 'normalise = "softmax(n)"')
    line, col, msg = spec_error(text)
    assert line == 13 and "normalise" in msg


def test_unknown_input_role() -> None:
    text = spec_text().replace('v = "b h n e"', 'v = "b h n e"\nw = "b h n e"')
    line, _, msg = spec_error(text)
    assert line == 8 and "'w'" in msg


def test_unknown_index_in_inputs() -> None:
    text = spec_text().replace('q = "b h m d"', 'q = "b h m z"')
    line, _, msg = spec_error(text)
    assert line == 5 and "'z'" in msg


def test_unknown_index_in_einsum() -> None:
    text = spec_text().replace("k[b,h,n,d] * scale", "k[b,h,n,x] * scale")
    line, col, msg = spec_error(text)
    assert (line, col) == (10, col_of(text, 10, "x]")) and "'x'" in msg


def test_einsum_shape_mismatch() -> None:
    text = spec_text().replace('score = "q[b,h,m,d]', 'score = "q[b,h,n,d]')
    line, col, msg = spec_error(text)
    assert (line, col) == (10, col_of(text, 10, "q[")) and "[b,h,n,d]" in msg


def test_output_einsum_mismatch() -> None:
    text = spec_text().replace("v[b,h,n,e]\"", "v[b,h,m,e]\"")
    line, col, msg = spec_error(text)
    assert (line, col) == (14, col_of(text, 14, "v[")) and "'v'" in msg


def test_score_einsum_extra_factor() -> None:
    text = spec_text().replace("* scale\"", "* 2\"")
    line, _, msg = spec_error(text)
    assert line == 10 and "scale" in msg


def test_missing_capture_indices_arity() -> None:
    extra = '[captures]\nbias = { dims = "h r", dtype = "float32" }\n'
    text = spec_text(modify='"score + bias[h]"', extra=extra)
    line, col, msg = spec_error(text)
    assert (line, col) == (MODIFY_LINE + 2, col_of(text, MODIFY_LINE + 2, "bias[")) and "bias" in msg


def test_capture_declared_but_unused() -> None:
    text = spec_text(extra='[captures]\nbias = { dims = "h", dtype = "float32" }\n')
    line, _, msg = spec_error(text)
    assert line == line_of(text, "bias =") and "bias" in msg and "never used" in msg


def test_capture_unsupported_dtype() -> None:
    text = spec_text(modify='"score + t[h]"', extra='[captures]\nt = { dims = "h", dtype = "float64" }\n')
    line, _, msg = spec_error(text)
    assert line == line_of(text, "t = {") and "float64" in msg


def test_mask_that_is_a_number() -> None:
    for mask in ('"3"', '"m - n"', "4"):
        text = spec_text(mask=mask)
        line, _, msg = spec_error(text)
        assert line == MASK_LINE, (mask, msg)


def test_modify_that_is_a_condition() -> None:
    line, _, msg = spec_error(spec_text(modify='"score > 0"'))
    assert line == MODIFY_LINE and "condition" in msg


def test_int_param_with_float_default() -> None:
    extra = '[params]\nwindow = { type = "int", default = 2.5 }\n'
    text = spec_text(mask='"m - n < window"', extra=extra)
    line, _, msg = spec_error(text)
    assert line == line_of(text, "window =") and "window" in msg and "2.5" in msg


def test_int_param_with_float_default_subtable() -> None:
    """Same error, with the parameter written as a [params.window] sub-table."""
    extra = '[params.window]\ntype = "int"\ndefault = 2.5\n'
    text = spec_text(mask='"m - n < window"', extra=extra)
    line, _, msg = spec_error(text)
    assert line_of(text, "[params.window]") <= line <= line_of(text, "default =") and "window" in msg


def test_param_type_and_reserved_name() -> None:
    for decl in ("flag = true", "scale = 1.0", 'w = { type = "str", default = 1 }'):
        line, _, msg = spec_error(spec_text(extra=f"[params]\n{decl}\n"))
        assert line == 9, (decl, msg)
        assert decl.split()[0] in msg or "parameter" in msg, msg


def test_unsupported_normalisation() -> None:
    text = spec_text().replace("softmax(n)", "softmax(m)")
    line, _, msg = spec_error(text)
    assert line == 13 and "softmax(m)" in msg


def test_hk_defined_but_unused() -> None:
    text = spec_text(extra='[indices]\nhk = "h // 2"\n')
    line, _, msg = spec_error(text)
    assert line == line_of(text, "hk =") and "hk" in msg


def test_hk_must_be_an_index_expression() -> None:
    text = spec_text(extra='[indices]\nhk = "m // 2"\n').replace('k = "b h n d"', 'k = "b hk n d"') \
        .replace('v = "b h n e"', 'v = "b hk n e"').replace("k[b,h,n,d]", "k[b,hk,n,d]").replace(
            "v[b,h,n,e]", "v[b,hk,n,e]")
    line, _, msg = spec_error(text)
    assert line == line_of(text, "hk =") and "'m'" in msg


def test_error_messages_never_span_lines() -> None:
    """Even an error quoting a multi-line value stays on one line."""
    text = spec_text(modify='"""score +\n  sin(m)"""')
    line, _, _ = spec_error(text)
    assert line == MODIFY_LINE


def test_loader_has_no_eval() -> None:
    """The loader and parser never call eval/exec/sympify on spec text."""
    import attncc.spec.parser as parser
    for mod in (loader, parser):
        src = Path(mod.__file__).read_text()
        for bad in ("eval(", "exec(", "sympify(", "compile("):
            code = [ln for ln in src.splitlines() if bad in ln and not ln.lstrip().startswith(("#", '"'))]
            assert not [ln for ln in code if re.search(rf"(?<![\w.]){re.escape(bad)}", ln)], (mod.__name__, bad)
