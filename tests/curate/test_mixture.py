"""The mixture manifest reproduces the report's Table 5 arithmetic and warns on over-repeated sources."""

from __future__ import annotations

import pytest

from phiforge.curate.mixture import build_manifest, format_manifest, read_manifest, write_manifest
from phiforge.errors import ConfigError, DataError

TABLE5 = {"web": (0.15, 1.3e12, 1.2), "web_rewrites": (0.15, 290e9, 5.2), "synthetic": (0.40, 290e9, 13.8),
          "code": (0.20, 820e9, 2.4), "acquired": (0.10, 580e9, 1.7)}


def test_table5_epochs_from_a_10t_budget(tmp_path):
    m = build_manifest({k: v[0] for k, v in TABLE5.items()}, {k: int(v[1]) for k, v in TABLE5.items()}, 10 ** 13,
                       max_epochs=10)
    epochs = {r["source"]: r["epochs"] for r in m.rows}
    for name, (_, _, paper) in TABLE5.items():
        assert epochs[name] == pytest.approx(paper, abs=0.05)
    assert len(m.warnings) == 1 and "'synthetic'" in m.warnings[0]
    write_manifest(tmp_path / "m.json", m)
    again = read_manifest(tmp_path / "m.json")
    assert again == m and again.fractions()["synthetic"] == pytest.approx(0.4)
    assert "WARNING" in format_manifest(again)


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="no token count"):
        build_manifest({"a": 1.0}, {"b": 10}, 100, max_epochs=1)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="rebuild"):
        read_manifest(tmp_path / "bad.json")
