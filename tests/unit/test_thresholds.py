"""The threshold audit (vicreg_lightning/metrics/thresholds.py): thresholds against their
definitions, and groups with and without a planted difference."""

from __future__ import annotations

import pytest
import torch

from vicreg_lightning.metrics.thresholds import (
    decision_audit,
    equal_error_threshold,
    match_audit,
    pair_scores,
    threshold_at_fmr,
)


def clustered(seed: int, n: int = 600, classes: int = 10, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=g)
    return centres[labels] + 0.8 * torch.randn(n, dim, generator=g), labels


def test_a_threshold_at_a_false_match_rate_lets_that_share_of_impostor_pairs_match():
    impostor = torch.randn(10_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for fmr in (0.1, 0.01, 0.001):
        assert float((impostor >= threshold_at_fmr(impostor, fmr)).double().mean()) == pytest.approx(fmr, abs=1e-4)


def test_the_equal_error_threshold_balances_false_matches_and_false_non_matches():
    g = torch.Generator().manual_seed(0)
    genuine = torch.randn(300, generator=g, dtype=torch.float64) + 2
    impostor = torch.randn(3000, generator=g, dtype=torch.float64)

    def gap(t: float) -> float:
        return abs(float((impostor >= t).double().mean()) - float((genuine < t).double().mean()))

    brute = min(gap(c) for c in torch.cat([genuine, impostor]).tolist())
    assert gap(equal_error_threshold(genuine, impostor)) == pytest.approx(brute, abs=1e-12)


def test_pair_scores_are_the_cosines_of_every_pair_once():
    z, labels = clustered(0, n=5)
    cosine, genuine, first, second = pair_scores(z, labels)
    assert len(cosine) == 10 and bool((first < second).all())
    k = 3
    expected = torch.nn.functional.cosine_similarity(z[first[k]].double(), z[second[k]].double(), dim=0)
    assert float(cosine[k]) == pytest.approx(float(expected), abs=1e-12)
    assert bool(genuine[k]) == bool(labels[first[k]] == labels[second[k]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_squeezed_subgroup_is_flagged_at_one_percent_and_a_random_grouping_is_not(seed):
    z, labels = clustered(seed)
    g = torch.Generator().manual_seed(100 + seed)
    # The planted subgroup: a sixth of the images, their embeddings pulled towards one point, so
    # that its impostor pairs look alike.
    squeezed = torch.randperm(len(z), generator=g)[: len(z) // 6]
    z[squeezed] = 0.3 * z[squeezed] + 3.0 * torch.randn(z.shape[1], generator=g)
    planted = ["squeezed" if i in set(squeezed.tolist()) else "rest" for i in range(len(z))]
    at_one_percent = {row["point"]: row for row in match_audit(z, labels, planted)}["FMR 0.01"]
    assert at_one_percent["flagged"] and at_one_percent["worst"] == "squeezed"
    assert at_one_percent["global_fmr"] <= 0.01

    random_groups = [f"site {int(i)}" for i in torch.randint(0, 3, (len(z),), generator=g)]
    others = [i for i in range(len(z)) if planted[i] == "rest"]
    audit = match_audit(z[others], labels[others], [random_groups[i] for i in others])
    assert not any(row["flagged"] for row in audit), [(row["point"], row["fmr_ratio"]) for row in audit]


def test_a_disparity_that_random_groups_reach_is_not_flagged():
    """With few false matches per group (FMR 0.1% of 100 images' pairs), random groups alone give
    ratios above the bound: the permutation baseline keeps them from being flagged."""
    unvetoed = []
    for seed in range(4):
        z, labels = clustered(seed, n=240)
        g = torch.Generator().manual_seed(seed)
        random_groups = [f"site {int(i)}" for i in torch.randint(0, 4, (len(z),), generator=g)]
        without, with_chance = (match_audit(z, labels, random_groups, permutations=k)[2] for k in (0, 100))
        assert with_chance["fmr_ratio"] == without["fmr_ratio"] and without["chance_ratio"] is None
        assert not with_chance["flagged"], with_chance
        unvetoed.append(without["flagged"])
    assert any(unvetoed)  # the bound alone would have flagged a random grouping


def probe_scores(seed: int, n: int = 900, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    logits = torch.randn(n, classes, generator=g) + 2.5 * torch.nn.functional.one_hot(labels, classes)
    sites = [f"site {int(i)}" for i in torch.randint(0, 3, (n,), generator=g)]
    return logits, labels, sites


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_probe_audit_flags_a_group_the_decision_favours_and_not_a_random_one(seed):
    logits, labels, sites = probe_scores(seed)
    audit = {row["point"]: row for row in decision_audit(logits.softmax(1), labels, sites)}
    assert not any(row["flagged"] for row in audit.values()), [(p, r["fpr_ratio"]) for p, r in audit.items()]
    # Site 2's images look more like class 3 to the probe: its decision "class 3" fires more often there.
    favoured = torch.tensor([site == "site 2" for site in sites])
    logits[favoured, 3] += 1.5
    row = {row["point"]: row for row in decision_audit(logits.softmax(1), labels, sites)}["FPR 0.01"]
    assert row["flagged"] and row["worst_class"] == "3" and row["worst"] == "site 2"
    # Its numbers against their definitions.
    decided = logits.softmax(1)[:, 3].double() >= row["threshold"]
    assert float(decided[labels != 3].double().mean()) == pytest.approx(0.01, abs=1 / (labels != 3).sum().item())
    in_site = favoured & (labels != 3)
    assert row["groups"]["site 2"]["fpr"] == pytest.approx(float(decided[in_site].double().mean()))
    assert row["groups"]["site 2"]["error_rate"] == pytest.approx(
        float((decided[favoured] != (labels[favoured] == 3)).double().mean()))
    assert row["groups"]["site 2"]["positive_rate"] == pytest.approx(float(decided[favoured].double().mean()))


@pytest.mark.parametrize("pairs", ["within", "involving"])
def test_per_group_rates_count_the_groups_pairs(pairs):
    z, labels = clustered(3, n=120)
    groups = [f"site {i % 3}" if pairs == "within" else f"class {int(label)}" for i, label in enumerate(labels)]
    cosine, genuine, first, second = pair_scores(z, labels)
    for row in match_audit(z, labels, groups, pairs=pairs, permutations=0):
        matched = cosine >= row["threshold"]
        for name, rates in row["groups"].items():
            a, b = torch.tensor([groups[i] == name for i in first]), torch.tensor([groups[i] == name for i in second])
            mine = (a & b) if pairs == "within" else (a | b)
            assert rates["impostor_pairs"] == int((mine & ~genuine).sum())
            assert rates["fmr"] == pytest.approx(float(matched[mine & ~genuine].double().mean()), abs=1e-12)
            if rates["genuine_pairs"]:
                assert rates["tmr"] == pytest.approx(float(matched[mine & genuine].double().mean()), abs=1e-12)


def test_groups_that_cannot_be_compared_give_none_not_nan():
    z, labels = clustered(0, n=60, classes=2)
    # Each site holds one class: no impostor pair within a site, no probe decision with negatives in two sites.
    sites = [f"site {int(label)}" for label in labels]
    audit = match_audit(z, labels, sites)
    assert all(row["fmr_ratio"] is None and row["worst"] is None and not row["flagged"] for row in audit)
    assert decision_audit(torch.nn.functional.one_hot(labels, 2).double(), labels, sites) == []
