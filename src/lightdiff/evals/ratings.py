"""Statistics of human ratings: who is preferred, how sure we are, and whether raters agree.

Two kinds of record, plain dicts (e.g. JSONL lines) or the pydantic models below:

* ``Comparison``: a rater saw two images of one prompt (and seed) side by side and chose
  ``"a"``, ``"b"`` or ``"tie"``.
* ``Score``: a rater gave one image an absolute score from 1 to 10, as the article's raters did.

What is here: Bradley-Terry strengths with bootstrap intervals and win rates (``bradley_terry``,
``bradley_terry_by``), agreement between raters (``krippendorff_pairwise``,
``krippendorff_scores``, ``icc``), self-consistency on repeated pairs (``rater_consistency``),
and how small a difference a study of a given size can detect (``minimum_detectable_difference``).
All functions are pure: records in, numbers out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from lightdiff.errors import InvalidRequest

SCORE_MIN, SCORE_MAX = 1.0, 10.0


class Comparison(BaseModel):
    model_config = ConfigDict(frozen=True)

    rater: str
    prompt: str
    model_a: str
    model_b: str
    choice: Literal["a", "b", "tie"]
    seed: int | None = None
    scenario: str | None = None

    @model_validator(mode="after")
    def _two_models(self) -> Comparison:
        if self.model_a == self.model_b:
            raise ValueError(f"model_a and model_b are both {self.model_a!r}; a comparison needs two models")
        return self

    def unit(self) -> tuple:
        """What was judged, independent of left/right order: (prompt, seed, (model, model))."""
        return (self.prompt, self.seed, tuple(sorted((self.model_a, self.model_b))))

    def preferred(self) -> str | None:
        """The chosen model's name, or None for a tie: the same answer whichever side it was shown on."""
        return {"a": self.model_a, "b": self.model_b, "tie": None}[self.choice]


class Score(BaseModel):
    model_config = ConfigDict(frozen=True)

    rater: str
    prompt: str
    model: str
    score: float
    seed: int | None = None
    scenario: str | None = None

    @field_validator("score")
    @classmethod
    def _on_scale(cls, v: float) -> float:
        if not (SCORE_MIN <= v <= SCORE_MAX):
            raise ValueError(f"score {v} is outside the {SCORE_MIN:g}-{SCORE_MAX:g} scale")
        return v

    def unit(self) -> tuple:
        """The image that was scored: (prompt, seed, model)."""
        return (self.prompt, self.seed, self.model)


def _coerce(items: Iterable[Any], cls: type[BaseModel]) -> list:
    out = []
    for i, item in enumerate(items):
        if isinstance(item, cls):
            out.append(item)
            continue
        try:
            out.append(cls.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or cls.__name__.lower()
            raise InvalidRequest(field, f"{cls.__name__.lower()} #{i} ({item!r}) is invalid: {err['msg']}.",
                                 f"Each {cls.__name__.lower()} needs "
                                 f"{', '.join(n for n, f in cls.model_fields.items() if f.is_required())}"
                                 + (" with choice 'a', 'b' or 'tie'." if cls is Comparison
                                    else f" with a score from {SCORE_MIN:g} to {SCORE_MAX:g}.")) from exc
    return out


# ------------------------------------------------------------------------------- Bradley-Terry


def _outcomes(comparisons: Sequence[Comparison], models: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per comparison: index of model_a, index of model_b, and model_a's share of the win (1, 0, 0.5)."""
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[c.model_a] for c in comparisons], dtype=np.int64)
    b = np.array([index[c.model_b] for c in comparisons], dtype=np.int64)
    share = np.array([{"a": 1.0, "b": 0.0, "tie": 0.5}[c.choice] for c in comparisons])
    return a, b, share


def _win_matrix(n: int, a: np.ndarray, b: np.ndarray, share: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    w = np.ones(a.size) if weight is None else weight
    wins = np.zeros((n, n))
    np.add.at(wins, (a, b), w * share)
    np.add.at(wins, (b, a), w * (1.0 - share))
    return wins


def _fit(wins: np.ndarray, alpha: float) -> np.ndarray:
    import choix

    return choix.ilsr_pairwise_dense(wins, alpha=alpha, max_iter=1000)


def _check_connected(models: Sequence[str], a: np.ndarray, b: np.ndarray) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(models)
    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    if count > 1:
        parts = [sorted(m for m, lab in zip(models, labels) if lab == k) for k in range(count)]
        raise InvalidRequest("comparisons", "the models fall into groups never compared with each other: "
                             + "; ".join("{" + ", ".join(p) + "}" for p in parts) + ".",
                             "Add comparisons that link the groups; strengths across unlinked groups are undefined.")


def bradley_terry(comparisons: Iterable[Any], *, n_boot: int = 1000, confidence: float = 0.95,
                  seed: int = 0, alpha: float = 0.01) -> list[dict[str, Any]]:
    """Bradley-Terry strengths of each model, with bootstrap intervals, and win rates.

    Model: P(i preferred to j) = 1 / (1 + exp(-(s_i - s_j))). ``strength`` is s (natural-log
    scale, centred to mean 0 over the models present): a gap of 1.0 means the stronger model is
    preferred 73% of the time. Fitted by choix.ilsr_pairwise_dense (maximum likelihood via
    iterative Luce spectral ranking) on a win matrix.

    Ties count as half a win each way (the usual convention, as in chess scoring): two models
    that always tie get equal strength; a tie adds evidence that the two are close.
    ``alpha`` is choix's regulariser (a pseudo-rate added between every pair); at 0.01 it only
    matters when a model never loses, where plain maximum likelihood runs to infinity.

    Intervals: nonparametric bootstrap over comparisons (resample the list with replacement,
    refit, take the percentile interval), ``n_boot`` times, seeded. Rows are sorted by strength.
    """
    comps = _coerce(comparisons, Comparison)
    if not comps:
        raise InvalidRequest("comparisons", "no comparisons were given.", "Pass at least one comparison record.")
    models = sorted({c.model_a for c in comps} | {c.model_b for c in comps})
    a, b, share = _outcomes(comps, models)
    _check_connected(models, a, b)
    n = len(models)
    strength = _fit(_win_matrix(n, a, b, share), alpha)

    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, n))
    for k in range(n_boot):
        weight = np.bincount(rng.integers(0, a.size, a.size), minlength=a.size).astype(np.float64)
        # A resample can drop every comparison of a model; the regulariser keeps it at a finite value.
        boot[k] = _fit(_win_matrix(n, a, b, share, weight), alpha)
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail], axis=0) if n_boot else (np.full(n, np.nan),) * 2

    rows = []
    for i, m in enumerate(models):
        as_a, as_b = a == i, b == i
        wins = float(share[as_a].sum() + (1 - share[as_b]).sum())
        ties = int((share[as_a | as_b] == 0.5).sum())
        total = int(as_a.sum() + as_b.sum())
        rows.append({"model": m, "strength": float(strength[i]), "ci_low": float(lo[i]), "ci_high": float(hi[i]),
                     "win_rate": wins / total, "wins": int(round(wins - ties / 2)), "ties": ties,
                     "losses": total - int(round(wins - ties / 2)) - ties, "n": total})
    return sorted(rows, key=lambda r: -r["strength"])


def bradley_terry_by(comparisons: Iterable[Any], by: str = "scenario", **kwargs: Any) -> list[dict[str, Any]]:
    """``bradley_terry`` per value of ``by`` (e.g. scenario) and over everything (``by`` = "all")."""
    comps = _coerce(comparisons, Comparison)
    if by not in Comparison.model_fields:
        raise InvalidRequest("by", f"cannot group comparisons by {by!r}.",
                             f"Use one of: {', '.join(Comparison.model_fields)}.")
    missing = [i for i, c in enumerate(comps) if getattr(c, by) is None]
    if missing:
        raise InvalidRequest(by, f"{len(missing)} comparisons (first #{missing[0]}) have no {by!r}.",
                             f"Record the {by} with every comparison, or group by another field.")
    groups: dict[Any, list[Comparison]] = defaultdict(list)
    for c in comps:
        groups[getattr(c, by)].append(c)
    out = []
    for key in [*sorted(groups, key=str), "all"]:
        for row in bradley_terry(comps if key == "all" else groups[key], **kwargs):
            out.append({by: key, **row})
    return out


# ----------------------------------------------------------------------------------- agreement


def _alpha(matrix: np.ndarray, level: str) -> float:
    import krippendorff

    try:
        return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=level))
    except ValueError:
        return math.nan  # one value in the whole table: agreement is undefined, not perfect


def _reliability_table(values: dict[tuple, dict[str, float]], raters: list[str]) -> np.ndarray:
    units = sorted(values, key=str)
    table = np.full((len(raters), len(units)), np.nan)
    for j, u in enumerate(units):
        for i, r in enumerate(raters):
            table[i, j] = values[u].get(r, np.nan)
    return table


def _agreement(values: dict[tuple, dict[str, float]], level: str) -> dict[str, Any]:
    raters = sorted({r for per_unit in values.values() for r in per_unit})
    shared = {u: v for u, v in values.items() if len(v) >= 2}
    if len(raters) < 2 or not shared:
        raise InvalidRequest("rater", f"agreement needs two raters judging the same items; got {len(raters)} "
                             f"rater(s) and {len(shared)} item(s) judged by two or more.",
                             "Have at least two raters judge some of the same images or pairs.")
    return {"alpha": _alpha(_reliability_table(values, raters), level), "level": level,
            "raters": len(raters), "units": len(shared)}


def krippendorff_pairwise(comparisons: Iterable[Any]) -> dict[str, Any]:
    """Krippendorff's alpha (nominal) of pairwise choices, via the krippendorff package.

    A unit is (prompt, seed, unordered model pair). The value is coded relative to the unit's
    own pair, 0 = first model (by name) preferred, 1 = the second, 2 = tie, so showing the pair
    with sides swapped is the same question, and every unit offers the same three answers. (Coding
    by model name instead would pool three or more names over units that each offer two, which
    inflates the expected disagreement and so alpha.) A rater's repeats of a unit count once
    (their first answer); repeats are what ``rater_consistency`` is for.
    1 is perfect agreement, 0 is chance, below 0 is systematic disagreement; NaN when every answer
    was the same (alpha is undefined without variation).
    """
    values: dict[tuple, dict[str, float]] = defaultdict(dict)
    for c in _coerce(comparisons, Comparison):
        unit = c.unit()
        preferred = c.preferred()
        code = 2.0 if preferred is None else float(unit[2].index(preferred))
        values[unit].setdefault(c.rater, code)
    return _agreement(values, "nominal")


def _mean_scores(scores: Iterable[Any]) -> dict[tuple, dict[str, float]]:
    sums: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in _coerce(scores, Score):
        sums[s.unit()][s.rater].append(s.score)
    return {u: {r: float(np.mean(v)) for r, v in per.items()} for u, per in sums.items()}


def krippendorff_scores(scores: Iterable[Any]) -> dict[str, Any]:
    """Krippendorff's alpha (interval level) of 1-10 scores; a unit is one image (prompt, seed, model).

    A rater's repeated scores of one image are averaged. Missing ratings are allowed.
    """
    return _agreement(_mean_scores(scores), "interval")


def icc(scores: Iterable[Any]) -> dict[str, Any]:
    """Intraclass correlation ICC(2,1) and ICC(2,k) of 1-10 scores (Shrout & Fleiss 1979, case 2).

    Two-way random effects, absolute agreement: images (targets) and raters are both samples.
    From the two-way ANOVA without replication on the n images x k raters table:
    MSR (between images), MSC (between raters), MSE (residual), and
      ICC(2,1) = (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)   one rater's reliability
      ICC(2,k) = (MSR - MSE) / (MSR + (MSC - MSE) / n)                 reliability of the k-rater mean
    Only images scored by every rater are used (``dropped`` says how many were not); repeats by
    one rater are averaged. Hand-written: pingouin has it but pulls in pandas for one formula.
    """
    values = _mean_scores(scores)
    raters = sorted({r for per in values.values() for r in per})
    complete = {u: v for u, v in values.items() if len(v) == len(raters)}
    n, k = len(complete), len(raters)
    if n < 2 or k < 2:
        raise InvalidRequest("scores", f"ICC needs at least 2 raters who all scored the same 2+ images; "
                             f"got {k} rater(s) and {n} image(s) scored by all of them.",
                             "Have every rater score the same set of images.")
    y = _reliability_table(complete, raters).T  # n images x k raters
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((y - grand) ** 2).sum() - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    denom1 = msr + (k - 1) * mse + k * (msc - mse) / n
    denomk = msr + (msc - mse) / n
    return {"icc2_1": float((msr - mse) / denom1) if denom1 else math.nan,
            "icc2_k": float((msr - mse) / denomk) if denomk else math.nan,
            "targets": n, "raters": k, "dropped": len(values) - n}


def rater_consistency(comparisons: Iterable[Any]) -> list[dict[str, Any]]:
    """How often each rater gives the same answer when shown the same pair again.

    For every (rater, unit) answered m >= 2 times, all m(m-1)/2 pairs of answers are compared
    (swapped sides count as the same question). ``consistency`` = agreeing pairs / pairs; random
    clicking between two images gives about 0.5. One row per rater (NaN without repeats), then
    ``rater`` = "all" pooling everyone.
    """
    answers: dict[tuple[str, tuple], list[str | None]] = defaultdict(list)
    for c in _coerce(comparisons, Comparison):
        answers[(c.rater, c.unit())].append(c.preferred())
    per_rater: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # repeated units, pairs, agreeing
    for (rater, _), given in answers.items():
        counts = per_rater[rater]
        m = len(given)
        if m < 2:
            continue
        counts[0] += 1
        counts[1] += m * (m - 1) // 2
        counts[2] += sum(given[i] == given[j] for i in range(m) for j in range(i + 1, m))
    rows = []
    for rater in [*sorted(per_rater), "all"]:
        units, pairs, same = (per_rater[rater] if rater != "all"
                              else [sum(v[i] for v in per_rater.values()) for i in range(3)])
        rows.append({"rater": rater, "repeated_units": units, "pairs": pairs, "agreeing_pairs": same,
                     "consistency": same / pairs if pairs else math.nan})
    return rows


# ------------------------------------------------------------------------------- study power


def paired_difference_sd(scores: Iterable[Any], models: Sequence[str] | None = None) -> dict[str, Any]:
    """SD of the paired score difference between two models, estimated from ratings.

    A pair is the same rater scoring both models' images of one prompt and seed. With more than
    two models, differences of every model pair are centred on that pair's own mean (the mean is
    the effect, not noise) and pooled. Feed ``sd_diff`` to ``minimum_detectable_difference``.
    """
    table: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in _coerce(scores, Score):
        table[(s.rater, s.prompt, s.seed)][s.model].append(s.score)
    names = sorted({m for per in table.values() for m in per}) if models is None else list(models)
    resid_ss, dof, n_pairs = 0.0, 0, 0
    for i, m1 in enumerate(names):
        for m2 in names[i + 1:]:
            d = np.array([np.mean(per[m1]) - np.mean(per[m2]) for per in table.values() if m1 in per and m2 in per])
            if d.size >= 2:
                resid_ss += float(((d - d.mean()) ** 2).sum())
                dof += d.size - 1
                n_pairs += d.size
    if dof == 0:
        raise InvalidRequest("scores", f"no two models ({', '.join(names) or 'none'}) were scored by the same "
                             "rater on the same prompt at least twice, so the paired SD cannot be estimated.",
                             "Have each rater score every model's image for each prompt.")
    sd_diff = math.sqrt(resid_ss / dof)
    return {"sd_diff": sd_diff, "sd": sd_diff / math.sqrt(2), "pairs": n_pairs}


# Assumed SD of one 1-10 score when no ratings exist yet. Untrained raters' scores of one image
# typically spread 1-2 points on a 10-point scale; 1.5 is the middle. Replace it with
# paired_difference_sd(...)["sd"] as soon as ratings exist.
ASSUMED_SCORE_SD = 1.5


@dataclass(frozen=True)
class DetectableDifference:
    n_prompts: int
    n_seeds: int
    n_raters: int
    n: int  # paired ratings (or votes): prompts x seeds x raters
    sd: float  # SD of one score
    sd_diff: float  # SD of a paired difference of two scores
    alpha: float
    power: float
    score_points: float  # smallest mean gap on the 1-10 scale detectable
    win_rate: float  # smallest pairwise win rate distinguishable from 50% (NaN: none is)
    sd_note: str

    def sentence(self) -> str:
        wr = (f"a win rate of at least {self.win_rate:.0%}" if math.isfinite(self.win_rate)
              else "no win rate at all")
        return (f"{self.n_prompts} prompts x {self.n_seeds} seed(s) x {self.n_raters} raters = {self.n} paired "
                f"ratings, with a score SD of {self.sd:.2f} points ({self.sd_note}), can at best detect a gap of "
                f"{self.score_points:.2f} points on the 1-10 scale (two-sided alpha {self.alpha:g}, power "
                f"{self.power:.0%}); in side-by-side votes, {wr} over 50%. Smaller gaps are noise.")


def minimum_detectable_difference(n_prompts: int, n_seeds: int = 1, n_raters: int = 3, *,
                                  sd: float = ASSUMED_SCORE_SD, sd_diff: float | None = None,
                                  alpha: float = 0.05, power: float = 0.8,
                                  sd_note: str = "assumed") -> DetectableDifference:
    """The smallest model difference a rating study of this size can detect.

    1-10 scores, two models compared on the same prompts, seeds and raters (paired design), with
    a z test: MDE = (z_{1-alpha/2} + z_{power}) * sd_diff / sqrt(n), n = prompts x seeds x raters.
    ``sd_diff`` defaults to sd * sqrt(2) (two independent scores). Treating the n ratings as
    independent is the best case: raters scoring the same image share that image's luck, so the
    real MDE is larger. That makes the statement conservative in the right direction: if even
    the best case cannot see a gap, the study cannot.

    Pairwise votes: the smallest win rate p with (p - 0.5) sqrt(n) = z_{1-alpha/2} * 0.5
    + z_{power} * sqrt(p (1 - p)) (one-sample test of a proportion against 0.5; ties ignored).
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    for name, value in (("n_prompts", n_prompts), ("n_seeds", n_seeds), ("n_raters", n_raters)):
        if int(value) != value or value < 1:
            raise InvalidRequest(name, f"{name} must be a positive whole number, got {value!r}.",
                                 f"Pass {name}=1 or more.")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise InvalidRequest("alpha", f"alpha ({alpha}) and power ({power}) must lie strictly between 0 and 1.",
                             "Typical values: alpha=0.05, power=0.8.")
    if sd_diff is None:
        if not sd > 0:
            raise InvalidRequest("sd", f"sd must be positive, got {sd!r}.", "Pass the SD of one score, e.g. 1.5.")
        sd_diff = sd * math.sqrt(2)
    else:
        sd = sd_diff / math.sqrt(2)
    n = int(n_prompts * n_seeds * n_raters)
    za, zb = norm.ppf(1 - alpha / 2), norm.ppf(power)
    points = (za + zb) * sd_diff / math.sqrt(n)

    def gap(p: float) -> float:
        return (p - 0.5) * math.sqrt(n) - za * 0.5 - zb * math.sqrt(p * (1 - p))

    win_rate = brentq(gap, 0.5, 1.0) if gap(1.0) > 0 else math.nan
    return DetectableDifference(int(n_prompts), int(n_seeds), int(n_raters), n, float(sd), float(sd_diff),
                                alpha, power, float(points), float(win_rate), sd_note)
