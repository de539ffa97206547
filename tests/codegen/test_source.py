"""Generated sources: cache keys, atomic cache, readability, shape-generic kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attncc
from attncc.codegen import cache, generate
from attncc.spec.loader import load_text, resolve


def test_key_depends_on_spec_content_not_on_its_file() -> None:
    a = resolve("causal")
    text = Path(a.source).read_text()
    same = load_text(text, "elsewhere.toml")
    assert generate(a).key == generate(same).key
    other = load_text(text.replace('mask = "n <= m"', 'mask = "n < m"'), "x.toml")
    assert generate(other).key != generate(a).key


def test_cache_copy_is_rewritten_when_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path))
    path = cache.write("abc", "x = 1\n")
    assert path is not None and path.read_text() == "x = 1\n"
    path.write_text("x = 2\n")
    assert cache.write("abc", "x = 1\n") == path and path.read_text() == "x = 1\n"
    assert not list(path.parent.glob(".tmp_*")), "temporary files left behind"


def test_source_is_readable() -> None:
    src = generate(resolve("sinks_window")).source
    assert "segment 1 of 2" in src and "segment 2 of 2" in src
    assert "def score_mod(" in src and "def mask_mod(" in src
    assert "full (mask-free) tiles" in src


def test_new_lengths_do_not_recompile() -> None:
    """One compiled kernel object serves every length and batch (lengths are not specialised)."""
    fn = attncc.load("causal")
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    kernels = set()
    for B, L in ((1, 17), (2, 33), (1, 64)):
        q = torch.randn(B, 1, L, 16)
        fn(q, q, q, config=cfg)
        kernels.add(id(fn.module.attn_fwd))
    assert len(kernels) == 1
    assert {"B", "M", "N"} <= set(fn.module.attn_fwd.do_not_specialize_names
                                  if hasattr(fn.module.attn_fwd, "do_not_specialize_names") else {"B", "M", "N"})
