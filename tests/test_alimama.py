"""The real-data check on Alimama's ad-creative combinations (skips without ../shared/data)."""
from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA

ALIMAMA = SHARED_DATA / "alimama_aes"
pytestmark = pytest.mark.skipif(
    not (ALIMAMA / "ctr_online.txt").is_file(),
    reason=f"real data absent: {ALIMAMA} (../shared/data is not part of a user's clone)")


def test_alimama_check_fits_reports_and_respects_the_tree_constraint():
    from evals import alimama_check

    result = alimama_check.run(ALIMAMA, seed=0, steps=40, n_splits=2)
    assert result["combinations"] == 200 and result["heldout_combinations"] == 60
    assert result["slots"] == ["t", "a", "b", "c", "d"]
    # the constraint file forbids 8 (a, c) pairs, leaving exactly the 200 combinations in the data
    assert result["forbidden_pairs"] == 8 and result["valid_combinations_under_constraint"] == 200
    assert -1 <= result["heldout_spearman_mil"] <= 1 and len(result["heldout_spearman_mil_per_split"]) == 2
    assert result["generator_top1_respects_constraint"] is True
    assert 1 <= result["generator_top1_real_rank"] <= 200  # the pick is a real combination
    assert result["generator_top1_real_ctr"] is not None


def test_alimama_check_exits_2_on_missing_or_bad_data(tmp_path):
    from evals import alimama_check

    assert alimama_check.main(["--data-dir", str(tmp_path)]) == 2
    for name in alimama_check.FILES:
        (tmp_path / name).write_text((ALIMAMA / name).read_text())
    (tmp_path / "ctr_online.txt").write_text("10000\t 0 0 x 0 0 \t0.01\n")
    assert alimama_check.main(["--data-dir", str(tmp_path)]) == 2
