"""The D2 encoder fine-tuning probe (benchmarks/encoder_finetune.py): it must read D2's
non-test rows only, and its curve points must mean what the README says they mean."""

from __future__ import annotations

from collections import Counter

import numpy as np

from .conftest import benchmark_module, shared_data


def test_folds_split_exactly_the_d2_non_test_rows() -> None:
    shared_data("wmdp")
    shared_data("mmlu")
    probe = benchmark_module("encoder_finetune")
    d2 = benchmark_module("detection").protocol_d2()
    train_pos = Counter(t for target in d2.targets for t in target.forget)
    folds = [probe.Fold(0), probe.Fold(1)]
    for fold in folds:
        # Every WMDP training question is in exactly one half, and the MMLU rows are exactly
        # the protocol's training and calibration rows: no test row can reach the probe.
        assert Counter(t for t, _ in fold.train_pos + fold.val_pos) == train_pos
        assert not {t for t, _ in fold.train_pos} & {t for t, _ in fold.val_pos}
        assert Counter(fold.train_neg) == Counter(d2.targets[0].retain)
        assert Counter(fold.calibrate + fold.related + fold.other) == Counter(d2.calibration)
    assert {t for t, _ in folds[0].train_pos} == {t for t, _ in folds[1].val_pos}
    # The measuring half holds the protocol's related subjects, in about the protocol's share.
    assert 0.08 < len(folds[0].related) / (len(folds[0].related) + len(folds[0].other)) < 0.2


def test_curve_points_and_rates() -> None:
    probe = benchmark_module("encoder_finetune")
    related = np.arange(100) / 100.0  # 0.00 .. 0.99
    other = np.zeros(50)
    pos = {"bio": np.linspace(0.5, 1.5, 100), "cyber": np.full(100, 2.0)}
    row = probe.summarise(pos, related, other, threshold=0.9)
    assert row["related FPR"] == 0.09  # 0.91 .. 0.99
    assert row["other FPR"] == 0.0
    assert row["recall cyber"] == 1.0
    assert 0.55 < row["recall bio"] < 0.65
    # 2% of the related scores lie above their 0.98 quantile; the bio scores above it are ~48%.
    assert 0.7 < row["recall at related FPR 0.02"] < 0.8
    # Recall 0.97 needs a threshold at the 3rd percentile of the positives (~0.56 on bio),
    # which flags the related scores from 0.56 up.
    assert 0.4 < row["related FPR at recall 0.97"] < 0.47


def test_bad_arguments_exit_2(capsys) -> None:
    probe = benchmark_module("encoder_finetune")
    assert probe.main(["--folds", "2"]) == 2
    assert probe.main(["--folds", "x"]) == 2
    assert probe.main(["--epochs", "0"]) == 2
    assert "--folds must list 0 and/or 1" in capsys.readouterr().err
