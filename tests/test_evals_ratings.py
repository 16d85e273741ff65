"""Human-rating statistics on simulated raters whose true preferences are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from lightdiff.errors import InvalidRequest
from lightdiff.evals import ratings

TRUE_STRENGTH = {"sd15": -0.8, "flux": 0.0, "qwen": 0.8}  # centred, like the estimates


def _simulate(n, rng, strengths=TRUE_STRENGTH, scenario="portrait", raters=("ana", "bo", "cy")):
    """Random pairs, each judged by a Bradley-Terry rater with the given true strengths."""
    models = list(strengths)
    out = []
    for k in range(n):
        i, j = rng.choice(len(models), 2, replace=False)
        a, b = models[i], models[j]
        p_a = 1.0 / (1.0 + math.exp(-(strengths[a] - strengths[b])))
        out.append({"rater": raters[k % len(raters)], "prompt": f"p{k % 25}", "seed": k % 2,
                    "scenario": scenario, "model_a": a, "model_b": b,
                    "choice": "a" if rng.random() < p_a else "b"})
    return out


def _cmp(a, b, choice, rater="ana", prompt="p1", seed=0):
    return {"rater": rater, "prompt": prompt, "seed": seed, "model_a": a, "model_b": b, "choice": choice}


# ------------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_recovers_the_true_ordering():
    rows = ratings.bradley_terry(_simulate(600, np.random.default_rng(0)), n_boot=200)
    assert [r["model"] for r in rows] == ["qwen", "flux", "sd15"]
    for r in rows:
        assert r["ci_low"] < r["strength"] < r["ci_high"]
        assert r["strength"] == pytest.approx(TRUE_STRENGTH[r["model"]], abs=0.3)
    assert sum(r["n"] for r in rows) == 2 * 600
    best = rows[0]
    assert best["win_rate"] > 0.6 and best["wins"] + best["losses"] + best["ties"] == best["n"]


def test_bootstrap_intervals_cover_the_true_strengths():
    rng = np.random.default_rng(1)
    reps, covered, total = 40, 0, 0
    for _ in range(reps):
        for r in ratings.bradley_terry(_simulate(150, rng), n_boot=150, seed=int(rng.integers(1 << 30))):
            covered += r["ci_low"] <= TRUE_STRENGTH[r["model"]] <= r["ci_high"]
            total += 1
    assert covered / total >= 0.80  # nominal 95%; loose because 40 repetitions are few


def test_ties_count_half_a_win_each_way():
    all_ties = [_cmp("a1", "b1", "tie")] * 6
    rows = ratings.bradley_terry(all_ties, n_boot=20)
    assert [r["strength"] for r in rows] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert [r["win_rate"] for r in rows] == [0.5, 0.5]

    mixed = [_cmp("x", "y", "a"), _cmp("y", "x", "b"), _cmp("x", "y", "tie"), _cmp("x", "y", "tie")]
    by_model = {r["model"]: r for r in ratings.bradley_terry(mixed, n_boot=20)}
    assert by_model["x"]["win_rate"] == 0.75  # 2 wins + 2 half-wins out of 4
    assert (by_model["x"]["wins"], by_model["x"]["ties"], by_model["x"]["losses"]) == (2, 2, 0)
    assert by_model["x"]["strength"] > by_model["y"]["strength"]


def test_bradley_terry_by_scenario_keeps_scenarios_apart():
    rng = np.random.default_rng(2)
    flipped = {"sd15": 0.8, "flux": 0.0, "qwen": -0.8}  # sd15 wins the product scenario
    comps = _simulate(300, rng, scenario="portrait") + _simulate(300, rng, flipped, scenario="product")
    rows = ratings.bradley_terry_by(comps, by="scenario", n_boot=50)
    best = {s: max((r for r in rows if r["scenario"] == s), key=lambda r: r["strength"])["model"]
            for s in ("portrait", "product", "all")}
    assert best["portrait"] == "qwen" and best["product"] == "sd15"
    overall = {r["model"]: r["strength"] for r in rows if r["scenario"] == "all"}
    assert abs(overall["qwen"] - overall["sd15"]) < 0.5  # the two scenarios cancel out


def test_unlinked_models_and_bad_records_are_rejected():
    with pytest.raises(InvalidRequest, match=r"\{a, b\}; \{c, d\}"):
        ratings.bradley_terry([_cmp("a", "b", "a"), _cmp("c", "d", "b")], n_boot=5)
    with pytest.raises(InvalidRequest) as err:
        ratings.bradley_terry([_cmp("a", "b", "left")])
    assert err.value.field == "choice" and "'tie'" in err.value.hint
    with pytest.raises(InvalidRequest, match="both 'a'"):
        ratings.bradley_terry([_cmp("a", "a", "a")])
    with pytest.raises(InvalidRequest, match="no 'scenario'"):
        ratings.bradley_terry_by([_cmp("a", "b", "a")])


# ----------------------------------------------------------------------------------- agreement


def _pair_units(n):
    models = ["sd15", "qwen", "flux"]
    return [(f"p{k}", k % 3, models[k % 3], models[(k + 1) % 3]) for k in range(n)]


def test_krippendorff_pairwise_perfect_and_random_raters():
    rng = np.random.default_rng(3)
    units = _pair_units(300)
    truth = rng.choice(["a", "b", "tie"], size=len(units), p=[0.45, 0.45, 0.10])
    agree, random = [], []
    for (prompt, seed, a, b), answer in zip(units, truth):
        for rater in ("ana", "bo", "cy"):
            # Show the pair swapped to some raters: the answer is about the model, not the side.
            swap = rng.random() < 0.5
            choice = {"a": "b", "b": "a", "tie": "tie"}[answer] if swap else answer
            agree.append(_cmp(*((b, a) if swap else (a, b)), choice, rater, prompt, seed))
            random.append(_cmp(a, b, rng.choice(["a", "b"]), rater, prompt, seed))
    perfect = ratings.krippendorff_pairwise(agree)
    assert perfect["alpha"] == pytest.approx(1.0)
    assert (perfect["raters"], perfect["units"], perfect["level"]) == (3, 300, "nominal")
    assert abs(ratings.krippendorff_pairwise(random)["alpha"]) < 0.1


def test_krippendorff_scores_perfect_and_random_raters():
    rng = np.random.default_rng(4)
    images = [(f"p{k}", model) for k in range(60) for model in ("sd15", "qwen")]
    true_score = {img: float(rng.integers(1, 11)) for img in images}
    same = [{"rater": r, "prompt": p, "model": m, "score": true_score[(p, m)]}
            for (p, m) in images for r in ("ana", "bo", "cy")]
    noise = [{"rater": r, "prompt": p, "model": m, "score": float(rng.integers(1, 11))}
             for (p, m) in images for r in ("ana", "bo", "cy")]
    assert ratings.krippendorff_scores(same)["alpha"] == pytest.approx(1.0)
    assert abs(ratings.krippendorff_scores(noise)["alpha"]) < 0.1
    assert ratings.icc(same)["icc2_1"] == pytest.approx(1.0)
    assert abs(ratings.icc(noise)["icc2_1"]) < 0.15


def test_agreement_needs_two_raters_on_shared_items():
    with pytest.raises(InvalidRequest, match="two raters"):
        ratings.krippendorff_pairwise([_cmp("a", "b", "a", "ana"), _cmp("a", "b", "a", "ana", prompt="p2")])


def test_icc_matches_shrout_and_fleiss_1979():
    # Table 2 of Shrout & Fleiss (1979): 6 targets x 4 judges. Their Table 4 reports
    # ICC(2,1) = 0.29 and ICC(2,4) = 0.62.
    table = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    scores = [{"rater": f"judge{j}", "prompt": f"t{i}", "model": "m", "score": float(v)}
              for i, row in enumerate(table) for j, v in enumerate(row)]
    # One target scored by only three judges is left out, and says so.
    scores.append({"rater": "judge0", "prompt": "extra", "model": "m", "score": 5.0})
    result = ratings.icc(scores)
    assert result["icc2_1"] == pytest.approx(0.29, abs=0.005)
    assert result["icc2_k"] == pytest.approx(0.62, abs=0.005)
    assert (result["targets"], result["raters"], result["dropped"]) == (6, 4, 1)


def test_scores_off_the_scale_are_rejected():
    with pytest.raises(InvalidRequest, match="outside the 1-10 scale"):
        ratings.icc([{"rater": "ana", "prompt": "p", "model": "m", "score": 11}])


def test_rater_consistency_on_repeated_pairs():
    comps = [
        # ana: same unit three times, shown swapped once: answers qwen, qwen, sd15 -> 1 of 3 pairs agree
        _cmp("qwen", "sd15", "a", "ana"), _cmp("sd15", "qwen", "b", "ana"), _cmp("qwen", "sd15", "b", "ana"),
        # ana: a second unit twice, both ties -> agree
        _cmp("qwen", "sd15", "tie", "ana", prompt="p2"), _cmp("sd15", "qwen", "tie", "ana", prompt="p2"),
        # bo: no repeats
        _cmp("qwen", "sd15", "a", "bo"),
    ]
    rows = {r["rater"]: r for r in ratings.rater_consistency(comps)}
    assert (rows["ana"]["repeated_units"], rows["ana"]["pairs"], rows["ana"]["agreeing_pairs"]) == (2, 4, 2)
    assert rows["ana"]["consistency"] == 0.5
    assert math.isnan(rows["bo"]["consistency"])
    assert rows["all"]["consistency"] == 0.5


# ------------------------------------------------------------------------------- study power


def test_mde_matches_hand_calculation_for_the_articles_study():
    # 5 prompts x 1 seed x 3 raters = 15; sd 1.5 -> sd_diff = 1.5 * sqrt(2) = 2.1213.
    # z_0.975 + z_0.8 = 1.95996 + 0.84162 = 2.80158; 2.80158 * 2.1213 / sqrt(15) = 1.5345.
    mde = ratings.minimum_detectable_difference(5, 1, 3, sd=1.5)
    assert mde.n == 15
    assert mde.score_points == pytest.approx(1.5345, abs=1e-3)
    assert 1.5 <= mde.score_points <= 2.0  # "only about a 1.5-2 point gap"
    assert "1.53 points" in mde.sentence() and "assumed" in mde.sentence()
    # sd 2 gives 2.80158 * 2.8284 / 3.873 = 2.046.
    assert ratings.minimum_detectable_difference(5, 1, 3, sd=2.0).score_points == pytest.approx(2.046, abs=1e-3)


def test_mde_shrinks_with_more_prompts_seeds_and_raters():
    base = ratings.minimum_detectable_difference(5, 1, 3)
    for bigger in (ratings.minimum_detectable_difference(50, 1, 3), ratings.minimum_detectable_difference(5, 4, 3),
                   ratings.minimum_detectable_difference(5, 1, 10)):
        assert bigger.score_points < base.score_points
        assert 0.5 < bigger.win_rate < base.win_rate < 1.0
    # Four times the ratings halves the detectable gap.
    assert ratings.minimum_detectable_difference(20, 1, 3).score_points == pytest.approx(base.score_points / 2)


def test_mde_win_rate_has_the_stated_power_under_an_exact_binomial_test():
    mde = ratings.minimum_detectable_difference(100, 2, 2)  # 400 votes
    n = mde.n
    # Two-sided exact test of p = 0.5 at alpha 0.05: reject when wins >= upper critical value.
    upper = int(binom.isf(0.025, n, 0.5)) + 1
    power = binom.sf(upper - 1, n, mde.win_rate)
    assert power == pytest.approx(0.8, abs=0.04)
    assert math.isnan(ratings.minimum_detectable_difference(1, 1, 3).win_rate)  # 3 votes can never tell


def test_mde_from_estimated_sd_and_bad_arguments():
    rng = np.random.default_rng(5)
    scores = []
    for rater in ("ana", "bo", "cy"):
        for p in range(80):
            base = rng.uniform(4, 7)
            for model, effect in (("sd15", 0.0), ("qwen", 1.0)):
                score = float(np.clip(base + effect + rng.normal(0, 1.0), 1, 10))
                scores.append({"rater": rater, "prompt": f"p{p}", "model": model, "score": score})
    est = ratings.paired_difference_sd(scores)
    assert est["sd_diff"] == pytest.approx(math.sqrt(2) * 1.0, rel=0.1)
    mde = ratings.minimum_detectable_difference(5, 1, 3, sd_diff=est["sd_diff"], sd_note="estimated")
    assert mde.sd == pytest.approx(1.0, rel=0.1) and "estimated" in mde.sentence()
    with pytest.raises(InvalidRequest) as err:
        ratings.minimum_detectable_difference(0, 1, 3)
    assert err.value.field == "n_prompts"
