"""No code from a spec or from the kernel cache ever runs; an unusable kernel cache breaks nothing.

Every test plants payloads that would create a canary file in ``tmp_path`` if they ran, and
checks that the canary never appears.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import SMALL_TILES

import attncc
from attncc.cli import main
from attncc.codegen import cache
from attncc.codegen.literals import comment_text, doc_text, py_literal
from attncc.compiler import generate, load_module
from attncc.errors import InputError, SpecError
from attncc.runtime import ops
from attncc.runtime.api import CompiledAttention
from attncc.spec.loader import library, load_text, resolve

SPECS = Path(__file__).resolve().parents[2] / "specs"
CAUSAL = (SPECS / "causal.toml").read_text()
_COUNTER = iter(range(10**9))


def _code(canary: Path) -> str:
    return f"__import__('pathlib').Path({str(canary)!r}).write_text('ran')"


def payloads(canary: Path) -> list[str]:
    """Texts that would run ``_code`` (or break the module or the renderer) if pasted unescaped."""
    code = _code(canary)
    return [
        f'x"""\nimport os; {code}\n"""',
        f"x'''\n{code}\n'''",
        f'x\\"""\n{code}\n#',
        f'"""; {code}; """',
        f'\\\n"""\n{code}\n"""',
        "bad escapes \\x \\N \\u \\U1 \\777",
        "a NUL \x00 byte",
        "hooks {{NAME}} {{SEGMENTS}} {{HEADER}} {{MOD_EXPR}} {{",
        f'carriage\r"""\r{code}\r"""',
        f'line separators\u2028"""\u2029{code}\x85"""',
        f'tabs\tand\x0bvertical\x0cfeeds\x1b[31m"""\n{code}\n',
        "ends with a backslash \\",
        'ends with a quote "',
        f"full-width ｗ and astral \U0001f600 {code}",
        code,
    ]


def toml_basic(text: str) -> str:
    """``text`` as a TOML basic string literal (every control and non-ASCII character escaped)."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif " " <= c <= "~":
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def causal_with(description: str) -> str:
    """The built-in causal spec's text with another description (and so its own kernel key)."""
    new, count = re.subn(r'^description = ".*"$', lambda _: f"description = {toml_basic(description)}",
                         CAUSAL, count=1, flags=re.MULTILINE)
    assert count == 1, "causal.toml has no one-line description"
    return new


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), "code from a spec or the cache ran"


def _ids(n: int) -> list[str]:
    return [f"payload{i}" for i in range(n)]


PAYLOAD_IDS = _ids(len(payloads(Path("x"))))


def _payload(canary: Path, i: int) -> str:
    return payloads(canary)[i] + f" #{next(_COUNTER)}"  # a fresh kernel key for every test


def _spec_file(tmp_path: Path, description: str) -> Path:
    path = tmp_path / "evil.toml"
    path.write_text(causal_with(description))
    return path


# --- printers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("i", range(len(PAYLOAD_IDS)), ids=PAYLOAD_IDS)
def test_printed_text_means_itself(i: int) -> None:
    text = payloads(Path("/nonexistent/canary"))[i]
    assert ast.literal_eval(f'"""{doc_text(text)}"""') == text
    assert ast.literal_eval(py_literal(text)) == text
    line = comment_text(text)
    assert line.isascii() and line.isprintable(), f"comment text {line!r} is not one printable line"


def test_literals_of_non_finite_floats() -> None:
    value = {"a": float("inf"), "b": float("-inf"), "c": [1, (2.5,)], "d": None}
    text = py_literal(value)
    assert eval(text, {"float": float}) == value  # noqa: S307 - checking our own printer's output
    assert math.isnan(eval(py_literal(float("nan")), {"float": float}))  # noqa: S307


# --- description payloads through every entry point ---------------------------------------------

@pytest.mark.parametrize("i", range(len(PAYLOAD_IDS)), ids=PAYLOAD_IDS)
def test_description_through_load_module(canary: Path, tmp_path: Path, i: int) -> None:
    text = _payload(canary, i)
    fn = attncc.load(str(_spec_file(tmp_path, text)))
    assert fn.spec.description == text
    assert text in fn.module.__doc__, "module docstring lost the description"
    ast.parse(fn.source)  # the module is valid Python as a whole


@pytest.mark.parametrize("i", range(len(PAYLOAD_IDS)), ids=PAYLOAD_IDS)
def test_description_through_first_call(canary: Path, tmp_path: Path, i: int) -> None:
    fn = attncc.load(str(_spec_file(tmp_path, _payload(canary, i))))
    q = torch.randn(1, 1, 5, 16)
    out = fn(q, q, q, config=SMALL_TILES)
    assert torch.isfinite(out).all(), "output"


@pytest.mark.parametrize("i", range(len(PAYLOAD_IDS)), ids=PAYLOAD_IDS)
def test_description_through_cli_check(canary: Path, tmp_path: Path, i: int) -> None:
    path = _spec_file(tmp_path, _payload(canary, i))
    result = CliRunner().invoke(main, ["check", str(path), "--shape", "1,1,5,5,16"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


@pytest.mark.parametrize("i", range(len(PAYLOAD_IDS)), ids=PAYLOAD_IDS)
def test_description_through_compile_output(canary: Path, tmp_path: Path, i: int) -> None:
    text = _payload(canary, i)
    out = tmp_path / "kernel_module.py"
    result = CliRunner().invoke(main, ["compile", str(_spec_file(tmp_path, text)), "-o", str(out)])
    assert result.exit_code == 0, result.output
    source = out.read_text()
    assert source.startswith('"""attncc kernel for spec '), "compile -o output must open with its docstring"
    module_spec = importlib.util.spec_from_file_location(f"written_{next(_COUNTER)}", out)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    assert text in module.__doc__ and "Requires torch, triton and numpy" in module.__doc__
    assert callable(module.attention_forward)


# --- every string field of every shipped spec -----------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_DECLARED = re.compile(r"^([A-Za-z_]\w*)(?=\s*=\s*\{)", re.MULTILINE)  # param and capture names
_FIELD_PAYLOADS = (0, 3, 5, 6, 7, 8, 9, 11, 14)  # a spread of the payloads above, to keep the sweep bounded


def _variants(text: str, canary: Path) -> Iterator[tuple[str, str]]:
    """``text`` with one string literal, or one declared name, replaced by (or extended with) one payload."""
    literals = list(_STRING.finditer(text))
    assert literals, "no string fields found"
    pays = [payloads(canary)[i] for i in _FIELD_PAYLOADS]
    for decl in _DECLARED.finditer(text):
        for j, pay in enumerate(pays):
            yield (f"declared name {decl.group()} replaced by payload {j}",
                   text[:decl.start()] + toml_basic(decl.group() + pay) + text[decl.end():])
    for k, lit in enumerate(literals):
        value = ast.literal_eval(lit.group())  # shipped specs use simple strings that read alike
        for j, pay in enumerate(pays):
            for how, new in (("replaced", pay), ("extended", value + pay)):
                yield (f"literal {k} ({lit.group()[:30]}) {how} by payload {j}",
                       text[:lit.start()] + toml_basic(new) + text[lit.end():])


@pytest.mark.parametrize("name", sorted(library()))
def test_payloads_in_every_string_field(canary: Path, name: str) -> None:
    text = library()[name].read_text()
    outcomes = {"SpecError": 0, "module": 0}
    for what, variant in _variants(text, canary):
        try:
            spec = load_text(variant, f"{name}.toml")
            gen = generate(spec)
        except SpecError as exc:
            assert "\n" not in str(exc), f"{what}: multi-line error"
            outcomes["SpecError"] += 1
            continue
        module = cache.execute(gen.key, gen.source)  # render + exec; no kernels run here
        assert callable(getattr(module, "attention_forward", None) or module.chunk_forward), what
        assert not canary.exists(), f"{what}: the payload ran"
        outcomes["module"] += 1
    assert outcomes["module"] > 0 and outcomes["SpecError"] > 0, outcomes


# --- the cache key --------------------------------------------------------------------------------

def test_another_description_gets_another_key(canary: Path) -> None:
    builtin = resolve("causal")
    copy = load_text(causal_with(_payload(canary, 0)), "copy.toml")
    assert copy.content_hash != builtin.content_hash
    assert generate(copy).key != generate(builtin).key
    a, b = attncc.load(builtin), attncc.load(copy)
    assert a is not b
    assert copy.description in b.module.__doc__ and copy.description not in a.module.__doc__


def test_kernel_key_follows_the_printed_spelling() -> None:
    """``n <= m`` and ``m >= n`` share a content hash (one meaning) but print differently: two keys."""
    a = load_text(CAUSAL, "a.toml")
    b = load_text(CAUSAL.replace('mask = "n <= m"', 'mask = "m >= n"'), "b.toml")
    assert a.content_hash == b.content_hash
    ga, gb = generate(a), generate(b)
    assert ga.source != gb.source and ga.key != gb.key


# --- nothing read from the cache directory runs ---------------------------------------------------

def _with_old_header(body: str) -> str:
    """``body`` behind the integrity line attncc once trusted (a checksum anyone can recompute)."""
    return "# attncc-source-sha256: " + hashlib.sha256(body.encode()).hexdigest() + "\n" + body


def _not_yet_compiled(tmp_path: Path) -> tuple[Path, str, str]:
    """A spec file, its kernel key and its generated text; nothing of it has run in this process."""
    path = _spec_file(tmp_path, f"fresh {next(_COUNTER)}")
    gen = generate(resolve(str(path)))
    assert gen.module is None and cache.executed(gen.key) is None
    return path, gen.key, gen.source


def _cache_file(key: str) -> Path:
    directory = cache.cache_dir()
    assert directory is not None
    return directory / f"k_{key}.py"


def _run(path: Path) -> CompiledAttention:
    fn = attncc.load(str(path))
    q = torch.randn(1, 1, 5, 16)
    assert torch.isfinite(fn(q, q, q, config=SMALL_TILES)).all(), "output"
    return fn


def test_tampered_cache_file_with_valid_header_is_not_run(canary: Path, tmp_path: Path) -> None:
    spec_path, key, source = _not_yet_compiled(tmp_path)
    cached = _cache_file(key)
    cached.write_text(_with_old_header(f"{_code(canary)}\n{source}"))
    _run(spec_path)
    assert cached.read_text() == source, "the readable copy should be the generated text again"


def test_poisoned_bytecode_beside_the_source_is_not_run(canary: Path, tmp_path: Path) -> None:
    from importlib._bootstrap_external import _code_to_hash_pyc  # type: ignore[attr-defined]

    spec_path, key, source = _not_yet_compiled(tmp_path)
    cached = _cache_file(key)
    cached.write_text(source)  # the untouched source
    evil = compile(f"{_code(canary)}\n{source}", str(cached), "exec")
    pyc = Path(importlib.util.cache_from_source(str(cached)))
    pyc.parent.mkdir(parents=True, exist_ok=True)
    # An unchecked hash-based .pyc: an import of the .py would run it without reading the .py.
    pyc.write_bytes(_code_to_hash_pyc(evil, importlib.util.source_hash(cached.read_bytes()), checked=False))
    _run(spec_path)
    assert sorted(p.name for p in pyc.parent.iterdir()) == [pyc.name], "attncc wrote bytecode"


def test_no_bytecode_is_written(canary: Path, tmp_path: Path) -> None:
    spec_path, key, _ = _not_yet_compiled(tmp_path)
    _run(spec_path)
    assert _cache_file(key).exists()
    assert not list(_cache_file(key).parent.rglob("*.pyc"))


def test_random_bytes_in_a_cached_file(canary: Path, tmp_path: Path) -> None:
    spec_path, key, source = _not_yet_compiled(tmp_path)
    cached = _cache_file(key)
    cached.write_bytes(b"\xff\xfe\x80" + os.urandom(4096))
    _run(spec_path)
    assert cached.read_bytes() == source.encode()
    _run(spec_path)  # and again, from the memo


def test_triton_sees_the_executed_text(canary: Path, tmp_path: Path) -> None:
    """Triton reads kernel sources with inspect: it must get the executed text, never the file on disk."""
    spec_path, key, source = _not_yet_compiled(tmp_path)
    fn = attncc.load(str(spec_path))
    module = fn.module
    cached = _cache_file(key)
    cached.write_text(source.replace("def attn_fwd(", f"def attn_fwd(  # {_code(canary)}\n"))
    src = inspect.getsource(module.attn_fwd.fn)
    assert src in source and "def attn_fwd(" in src
    assert "attn_fwd(  #" not in src, "Triton would compile the file on disk"
    _run(spec_path)


def test_unknown_kernel_key_is_not_loaded_from_disk(canary: Path, tmp_path: Path) -> None:
    _, key, source = _not_yet_compiled(tmp_path)
    _cache_file(key).write_text(_with_old_header(f"{_code(canary)}\n{source}"))
    with pytest.raises(InputError) as info:
        ops.kernel_module(key)
    msg = str(info.value)
    assert "\n" not in msg and key in msg and "this process" in msg


# --- an unusable kernel cache ---------------------------------------------------------------------

UNUSABLE = [pytest.param("under_a_file", id="path-under-a-regular-file"),
            pytest.param("/dev/null/x", id="dev-null"),
            pytest.param("file_in_the_way", id="regular-file-as-kernels-dir")]


def _unusable(tmp_path: Path, kind: str) -> str:
    if kind == "under_a_file":
        (tmp_path / "file").write_text("")
        return str(tmp_path / "file" / "x")
    if kind == "file_in_the_way":
        (tmp_path / "root").mkdir()
        (tmp_path / "root" / "kernels").write_text("")
        return str(tmp_path / "root")
    return kind


@pytest.fixture
def unusable_cache(request: pytest.FixtureRequest, tmp_path: Path, canary: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ATTNCC_CACHE_DIR", _unusable(tmp_path, request.param))
    monkeypatch.setattr(cache, "_FALLBACK", {})
    yield


def _kernel_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, cache.KernelCacheWarning)]


@pytest.mark.parametrize("unusable_cache", UNUSABLE, indirect=True)
def test_unusable_cache_python_api(unusable_cache: None, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for i in range(2):
            fn = attncc.load(str(_spec_file(tmp_path, f"api {i} {next(_COUNTER)}")))
            q = torch.randn(1, 1, 5, 16)
            assert torch.isfinite(fn(q, q, q, config=SMALL_TILES)).all(), "output"
    found = _kernel_warnings(record)
    assert len(found) == 1, found
    assert "\n" not in found[0] and "unusable" in found[0]


@pytest.mark.parametrize("unusable_cache", UNUSABLE, indirect=True)
@pytest.mark.parametrize("command", [pytest.param(["compile"], id="compile"),
                                     pytest.param(["explain", "--shape", "1,1,77,77,16"], id="explain"),
                                     pytest.param(["check", "--shape", "1,1,5,5,16"], id="check")])
def test_unusable_cache_cli(unusable_cache: None, tmp_path: Path, command: list[str]) -> None:
    path = _spec_file(tmp_path, f"cli {next(_COUNTER)}")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [command[0], str(path), *command[1:]])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert len(_kernel_warnings(record)) <= 1


def test_cli_never_tracebacks_on_a_poisoned_cache(canary: Path, tmp_path: Path) -> None:
    path = _spec_file(tmp_path, f"cli poisoned {next(_COUNTER)}")
    key = generate(load_text(path.read_text(), str(path))).key
    cached = _cache_file(key)
    cached.write_bytes(os.urandom(512))
    result = CliRunner().invoke(main, ["check", str(path), "--shape", "1,1,5,5,16"])
    assert result.exit_code == 0, result.output
    assert cached.read_bytes() != b"" and b"attncc kernel" in cached.read_bytes()


def test_load_module_twice_runs_once(canary: Path, tmp_path: Path) -> None:
    spec_path, _, _ = _not_yet_compiled(tmp_path)
    first = load_module(generate(resolve(str(spec_path))))
    assert load_module(generate(resolve(str(spec_path)))) is first
    assert sys.modules[first.__name__] is first
