"""Paired statistics: McNemar's exact test and the bootstrap interval, on hand-computed cases."""

import json

import pytest

from claire.stats import bootstrap_ci, compare, mcnemar_p, paired, read_samples


def test_mcnemar_exact_values():
    # 6 items only the tuned model got right, 1 only the base: p = 2 * P(X <= 1 | n=7, 1/2) = 2 * 8/128
    base = [0] * 6 + [1] + [1] * 5
    tuned = [1] * 6 + [0] + [1] * 5
    assert mcnemar_p(base, tuned) == pytest.approx(16 / 128)
    assert mcnemar_p([1, 0], [1, 0]) == 1.0  # no discordant items
    assert mcnemar_p([0] * 10, [1] * 10) == pytest.approx(2 / 1024)


def test_bootstrap_interval_brackets_the_difference():
    base, tuned = [0, 1] * 50, [1, 1] * 50  # tuned is right on 50 more items
    low, high = bootstrap_ci(base, tuned)
    assert low < 0.5 < high and low > 0.3  # clearly above zero
    assert bootstrap_ci([1, 0] * 20, [1, 0] * 20) == (0.0, 0.0)


def test_compare_and_paired_groups(tmp_path):
    rows = [{"doc_id": i, "doc": {"rung": i % 2}, "acc": float(i % 3 == 0)} for i in range(12)]
    better = [{**r, "acc": 1.0} for r in rows]
    for name, data in (("b", rows), ("t", better)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    table = paired(read_samples(tmp_path / "b.jsonl"), read_samples(tmp_path / "t.jsonl"), "acc", "rung")
    assert set(table) == {"all", "rung=0", "rung=1"} and table["all"]["n"] == 12
    assert table["all"]["base"] == pytest.approx(4 / 12) and table["all"]["diff"] == pytest.approx(8 / 12)
    assert table["all"]["p_mcnemar"] == pytest.approx(2 / 256)
    with pytest.raises(ValueError, match="need the same non-empty items"):
        compare([], [])
