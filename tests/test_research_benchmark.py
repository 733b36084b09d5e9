"""benchmarks/research.py: the issue-6 comparison on a handful of images with tiny settings."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "research.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("research_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def research() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def tables(research: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> list:
    settings = research.Settings(images=6, train_images=16, broadcam_counts=(10, 16), opticam_iterations=3,
                                 scorecam_images=2, road_images=2, steps=4, batch_size=4)
    return research.run_research(settings, tmp_path_factory.mktemp("research"))


def test_every_setting_has_every_method_row(tables: list) -> None:
    rows = {t.key: list(t.rows) for t in tables}
    base = ["gradcam", "relevancecam", "opticam", "conceptor-gradcam", "gradcam++", "conceptor-gradcam++", "scorecam",
            "conceptor-scorecam"]
    assert rows == {
        "last": base, "middle": base,
        "broadcam": ["gradcam", "cam", "broadcam (10 training images)", "broadcam (16 training images)"],
        "attention": ["attention", "gradcam"],
    }
    assert [t.layer for t in tables[:2]] == ["/stage3/stage3.1/Relu_1_output_0", "/stage2/stage2.1/Relu_1_output_0"]


def test_numbers_are_finite_and_counts_follow_the_limits(research: ModuleType, tables: list) -> None:
    for table in tables:
        assert table.forward_ms > 0
        for label, values in table.rows.items():
            assert set(values) == set(research.COLUMNS), (table.key, label)
            for key, value in values.items():
                assert value is not None and math.isfinite(value), (table.key, label, key)
            counts = table.counts[label]
            expected = 2 if "scorecam" in label else 6
            assert counts["average_drop"] == counts["deletion"] == counts["pointing_game"] == expected
            assert counts["road_morf"] == 2
            assert 0 <= values["average_drop"] <= 100 and 0 <= values["pointing_game"] <= 100
            assert 0 <= values["insertion"] <= 1 and values["forward_ratio"] > 0


def test_report_has_one_table_per_setting_and_the_claims(research: ModuleType, tables: list) -> None:
    text = research.report(tables, research.Settings(images=6), "python benchmarks/research.py --images 6", 1.0)
    assert text.count("| method | AD % ↓") == 4
    assert "scorecam (n=2)" in text and "conceptor-scorecam (n=2)" in text
    assert "python benchmarks/research.py --images 6" in text
    claims = research.claim_checks(tables)
    assert len(claims) == 2 * 4 + 1
    assert all(line.endswith("confirmed") or "half confirmed" in line for line in claims)
    assert research._verdict(True, True, False, False) == "confirmed"
    assert research._verdict(False, True, False, False).startswith("half confirmed (AD only")
    assert research._verdict(True, False, False, True) == "not confirmed"
