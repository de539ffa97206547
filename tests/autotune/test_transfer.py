"""Export/import round trip, metadata checks and corrupt files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from attncc.autotune.cache import ImportCounts, TuningCache
from attncc.autotune.device import current_identity
from attncc.autotune.transfer import FORMAT, import_file, read_export
from attncc.autotune.transfer import export_file as export_entries
from attncc.autotune.tunable import Shape
from attncc.errors import InputError

from .cache_cases import C1, C2, C3, H100, entry


def fill(cache: TuningCache) -> None:
    cache.put(entry(Shape.of(1, 8, 1024, 1024, 64), C1, 1.25))
    cache.put(entry(Shape.of(1, 8, 4096, 4096, 64), C2, 7.5, kind="bwd"))
    cache.put(entry(Shape.of(4, 32, 1, 8192, 128), {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4,
                                                    "num_stages": 2}, 0.05, kind="decode"))


def test_round_trip(tmp_path: Path, sqlite_url: str) -> None:
    path = tmp_path / "out" / "cache.json"
    with TuningCache(sqlite_url) as source:
        fill(source)
        before = sorted(json.dumps(e.to_json(), sort_keys=True) for e in source.entries()[0])
        assert export_entries(source, path) == 3
    document = json.loads(path.read_text())
    assert document["format"] == FORMAT and document["format_version"] == 1
    meta = document["metadata"]
    assert meta["entries"] == 3 and meta["gpus"] == [dict(current_identity()._asdict())]
    assert meta["attncc_version"] and meta["triton_version"]
    with TuningCache(str(tmp_path / "fresh.db")) as target:
        assert import_file(target, path) == ImportCounts(new=3)
        after = sorted(json.dumps(e.to_json(), sort_keys=True) for e in target.entries()[0])
        assert import_file(target, path) == ImportCounts(unchanged=3)  # idempotent: nothing is rewritten
    assert after == before


def test_filtered_export(tmp_path: Path, sqlite_url: str) -> None:
    with TuningCache(sqlite_url) as cache:
        fill(cache)
        assert export_entries(cache, tmp_path / "bwd.json", kind="bwd") == 1
    _, entries = read_export(tmp_path / "bwd.json")
    assert [e.key.kind for e in entries] == ["bwd"]


def rewrite(path: Path, change: Any) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def exported(tmp_path: Path, sqlite_url: str) -> Path:
    path = tmp_path / "cache.json"
    with TuningCache(sqlite_url) as cache:
        fill(cache)
        export_entries(cache, path)
    return path


def set_gpu(document: dict[str, Any]) -> None:
    document["metadata"]["gpus"] = [{"name": H100.name, "capability": H100.capability}]
    for item in document["entries"]:
        item["key"]["gpu_name"], item["key"]["capability"] = H100.name, H100.capability


def set_version(document: dict[str, Any]) -> None:
    document["metadata"]["triton_version"] = "2.0.0"
    for item in document["entries"]:
        item["key"]["triton_version"] = "2.0.0"


@pytest.mark.parametrize(("change", "fragment"), [(set_gpu, "GPU NVIDIA H100"), (set_version, "triton 2.0.0")])
def test_metadata_mismatch_is_rejected_unless_forced(tmp_path: Path, sqlite_url: str, change: Any,
                                                     fragment: str) -> None:
    if change is set_gpu and current_identity() == H100:
        pytest.skip("this machine is the H100 the test pretends the file came from")
    path = exported(tmp_path, sqlite_url)
    rewrite(path, change)
    with TuningCache(str(tmp_path / "other.db")) as target:
        with pytest.raises(InputError) as info:
            import_file(target, path)
        message = str(info.value)
        assert fragment in message and "--force" in message and "\n" not in message
        assert target.count() == 0
        assert import_file(target, path, force=True) == ImportCounts(new=3)


def entry_gpu_not_in_metadata(document: dict[str, Any]) -> None:
    document["entries"][0]["key"]["gpu_name"] = "Other GPU"


def entry_version_differs(document: dict[str, Any]) -> None:
    document["entries"][1]["key"]["attncc_version"] = "9.9.9"


def entry_count_differs(document: dict[str, Any]) -> None:
    document["metadata"]["entries"] = 7


def config_outside_space(document: dict[str, Any]) -> None:
    document["entries"][0]["config"]["BLOCK_M"] = 96


def config_is_code(document: dict[str, Any]) -> None:
    document["entries"][0]["config"] = "__import__('os').system('true')"


def extra_field(document: dict[str, Any]) -> None:
    document["entries"][0]["__reduce__"] = "os.system"


def wrong_format(document: dict[str, Any]) -> None:
    document["format"] = "optuna-journal"


def bool_value(document: dict[str, Any]) -> None:
    document["entries"][0]["value"] = True


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (entry_gpu_not_in_metadata, "not listed in the metadata block"),
        (entry_version_differs, "versions that disagree"),
        (entry_count_differs, "metadata says 7 entries"),
        (config_outside_space, "BLOCK_M=96 not in"),
        (config_is_code, "must be a JSON object"),
        (extra_field, "unexpected fields ['__reduce__']"),
        (wrong_format, "not an attncc tuning-cache export"),
        (bool_value, "value must be a number"),
    ],
)
def test_inconsistent_or_invalid_files_are_rejected_even_when_forced(tmp_path: Path, sqlite_url: str,
                                                                     change: Any, fragment: str) -> None:
    path = exported(tmp_path, sqlite_url)
    rewrite(path, change)
    with TuningCache(str(tmp_path / "other.db")) as target:
        with pytest.raises(InputError) as info:
            import_file(target, path, force=True)
        assert fragment in str(info.value) and "\n" not in str(info.value)
        assert target.count() == 0


@pytest.mark.parametrize("content", [b"", b"{not json", b"\x80\x04\x95\x00pickle", b"[1, 2]", b'{"a": NaN}'])
def test_corrupt_export_file_is_one_line_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_export(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_import_keeps_better_existing_entries(tmp_path: Path, sqlite_url: str) -> None:
    path = exported(tmp_path, sqlite_url)
    with TuningCache(str(tmp_path / "other.db")) as target:
        better = entry(Shape.of(1, 8, 1024, 1024, 64), C3, 0.5)
        target.put(better)
        assert import_file(target, path) == ImportCounts(new=2, kept=1)
        assert target.get(better.key).config == C3


def test_import_says_what_was_new_updated_unchanged_or_kept(tmp_path: Path, sqlite_url: str) -> None:
    path = exported(tmp_path, sqlite_url)  # fwd C1 1.25 ms, bwd C2 7.5 ms, decode 0.05 ms
    with TuningCache(str(tmp_path / "other.db")) as target:
        target.put(entry(Shape.of(1, 8, 1024, 1024, 64), C3, 9.0))  # slower than the file's: updated
        better = entry(Shape.of(1, 8, 4096, 4096, 64), C3, 0.5, kind="bwd")  # faster than the file's: kept
        target.put(better)
        assert import_file(target, path) == ImportCounts(new=1, updated=1, kept=1)
        assert import_file(target, path) == ImportCounts(unchanged=2, kept=1)
        assert target.get(better.key).config == C3
        assert target.get(entry(Shape.of(1, 8, 1024, 1024, 64), C1).key).config == C1


def test_refused_import_creates_no_file(tmp_path: Path, sqlite_url: str, isolated_cache: Path) -> None:
    """A file refused for its metadata leaves no database behind, neither at --storage nor in the
    default cache directory."""
    from click.testing import CliRunner

    from attncc.autotune.cli import cache as cache_group

    path = exported(tmp_path, sqlite_url)
    document = json.loads(path.read_text())
    set_gpu(document)
    path.write_text(json.dumps(document))
    target = tmp_path / "new" / "target.db"
    for storage in ([f"--storage={target}"], []):
        result = CliRunner().invoke(cache_group, ["import", str(path), *storage])
        assert result.exit_code == 2 and "--force" in result.output, result.output
    assert not target.parent.exists() and not isolated_cache.exists()
