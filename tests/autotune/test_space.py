"""Config spaces, schema validation, heuristic defaults and shape parsing."""

from __future__ import annotations

import pytest

from attncc.autotune import SPACES, ConfigSpace, Shape, Tunable, default_config, validate_config
from attncc.autotune.space import ConfigSchemaError, config_to_str
from attncc.autotune.tunable import as_shape, parse_shape
from attncc.errors import AttnccError, InputError

from .fakes import FakeTunable


def test_spaces_declare_the_issue_parameters() -> None:
    assert SPACES["fwd"].names == ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "USE_TMA")
    assert SPACES["fwd"].params["USE_TMA"] == (1, 0) and SPACES["fwd"].defaults == {"USE_TMA": 1}
    assert SPACES["bwd"].names == ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
    assert SPACES["decode"].names == ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
    assert SPACES["decode"].params["BLOCK_M"] == (16,), "decode packs GQA rows: BLOCK_M is a minimum"
    assert SPACES["recurrence"].names == ("CHUNK", "BLOCK_K", "BLOCK_V", "num_warps", "num_stages")
    fwd = SPACES["fwd"].params
    assert min(fwd["BLOCK_M"]) == 16 and max(fwd["BLOCK_M"]) == 128
    assert fwd["num_warps"] == (2, 4, 8) and fwd["num_stages"] == (1, 2, 3, 4)
    assert SPACES["recurrence"].params["CHUNK"] == (16, 32, 64, 128)


def test_enumerate_respects_constraint_and_order() -> None:
    space = SPACES["fwd"]
    configs = space.enumerate()
    assert len(configs) == len(space) < 4 * 4 * 3 * 4 * 2
    assert all(c in space for c in configs)
    assert {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 8, "num_stages": 1} not in configs  # 1 elem/thread
    # canonical form: USE_TMA=1 (the default) is omitted, USE_TMA=0 spelled out
    assert configs[:2] == [{"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 2, "num_stages": 1},
                           {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 2, "num_stages": 1, "USE_TMA": 0}]
    assert len({space.key(c) for c in configs}) == len(configs)


def test_a_config_cached_before_use_tma_existed_still_validates() -> None:
    """Defaulted parameters: an omitted USE_TMA means 1; a wrong value is still refused."""
    from attncc.autotune.space import ConfigSchemaError, validate_config

    old = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    assert validate_config("fwd", old) == old
    assert validate_config("fwd", {**old, "USE_TMA": 1}) == old, "the default is stored omitted"
    assert validate_config("fwd", {**old, "USE_TMA": 0}) == {**old, "USE_TMA": 0}
    assert SPACES["fwd"].key(old) == SPACES["fwd"].key({**old, "USE_TMA": 1})
    with pytest.raises(ConfigSchemaError, match="USE_TMA=2"):
        validate_config("fwd", {**old, "USE_TMA": 2})
    with pytest.raises(ConfigSchemaError, match="unexpected"):
        validate_config("bwd", {**old, "USE_TMA": 0})


@pytest.mark.parametrize("kind", sorted(SPACES))
@pytest.mark.parametrize("head_dim", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_defaults_are_members_of_their_space(kind: str, head_dim: int, dtype: str) -> None:
    config = default_config(kind, head_dim, dtype)
    assert config in SPACES[kind]


def test_fwd_and_bwd_defaults_are_the_generated_modules_defaults() -> None:
    from attncc.schedules.prefill.schedule import DEFAULT_CONFIGS

    for kind in ("fwd", "bwd"):
        assert default_config(kind, 64, "fp16") == DEFAULT_CONFIGS[kind][64]
        assert default_config(kind, 48, "bf16") == DEFAULT_CONFIGS[kind][64]
        assert default_config(kind, 128, "fp16") == DEFAULT_CONFIGS[kind][128]
        assert default_config(kind, 200, "fp32") == DEFAULT_CONFIGS[kind][256]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4}, "missing ['num_stages']"),
        ({"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "x": 1}, "unexpected ['x']"),
        ({"BLOCK_M": 48, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}, "BLOCK_M=48 not in"),
        ({"BLOCK_M": "64", "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}, "must be an int"),
        ({"BLOCK_M": True, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}, "must be an int"),
        ({"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 8, "num_stages": 2}, "constraint"),
        ([64, 64, 4, 2], "JSON object"),
    ],
)
def test_validate_config_rejects_bad_data(config: object, fragment: str) -> None:
    with pytest.raises(ConfigSchemaError, match=None) as info:
        validate_config("fwd", config)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_validate_config_returns_clean_ordered_copy() -> None:
    raw = {"num_stages": 2, "num_warps": 4, "BLOCK_N": 32, "BLOCK_M": 64}
    clean = validate_config("fwd", raw)
    assert list(clean) == ["BLOCK_M", "BLOCK_N", "num_warps", "num_stages"]
    assert config_to_str(clean) == "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2"


def test_unknown_kind_and_dtype_are_one_line_errors() -> None:
    with pytest.raises(AttnccError, match="unknown kernel kind 'sideways'"):
        default_config("sideways", 64, "fp16")
    with pytest.raises(AttnccError, match="unknown dtype 'fp8'"):
        default_config("fwd", 64, "fp8")


def test_config_space_rejects_bad_declarations() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ConfigSpace({"A": ()})
    with pytest.raises(ValueError, match="repeated"):
        ConfigSpace({"A": (1, 1)})


def test_parse_shape() -> None:
    assert parse_shape("2,8,1024,512,64") == Shape(2, 8, 1024, 512, 64, 64)
    assert parse_shape(" 1, 4, 16, 16, 64, 128 ") == Shape(1, 4, 16, 16, 64, 128)
    assert as_shape((1, 2, 3, 4, 5)) == Shape(1, 2, 3, 4, 5, 5)
    assert str(Shape.of(1, 2, 3, 4, 5)) == "1,2,3,4,5,5"


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,4,x", "1,2,0,4,5", "1,2,3,4,5,6,7", "", "1,-2,3,4,5"])
def test_parse_shape_errors_are_one_line(text: str) -> None:
    with pytest.raises(InputError) as info:
        parse_shape(text)
    assert "\n" not in str(info.value)


def test_fake_tunable_satisfies_the_protocol() -> None:
    assert isinstance(FakeTunable(), Tunable)
