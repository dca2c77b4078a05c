"""Sampled Shapley values: exact on linear models, efficiency, antithetic variance, query budget."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from helpers import Recorder, model_path

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.methods.shapley import draw_permutations, prefix_keep, ranks, shapley_kernel_sizes
from blackbox_xai.methods.shapley_interactions import (
    EXTRA,
    neighbour_triples,
    segment_neighbours,
    size_neighbour_products,
    size_slopes,
)
from blackbox_xai.methods.shapley_leverage import (
    PairStrata,
    distinct_subsets,
    leverage_counts,
    leverage_pairs,
    leverage_shap,
    lexicographic_subsets,
    within_sizes,
)
from blackbox_xai.methods.shapley_shrinkage import shrink, smooth_prior
from blackbox_xai.perturb import make_baseline
from blackbox_xai.segmentation import grid_labels, relabel


@pytest.fixture(scope="module")
def small_linear():
    """f = flatten(x) @ W + b with scores of order one, so float32 scores are exact to ~1e-7."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((3 * 32 * 32, 4)) / 32).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    return w, b, (lambda x: x.reshape(len(x), -1) @ w + b)


def per_segment(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels.ravel(), weights=values.ravel().astype(np.float64))


class SegmentModel:
    """f = b.s + sum_{i<j} A_ij s_i s_j + c s_0 s_1 s_2 on s_j = mean of channel 0 over segment j.

    Its Shapley values (players = segments, reveal from a zero baseline) are known exactly:
    b_j s_j + 1/2 sum_i A_ij s_i s_j, plus a third of the triple term for segments 0, 1, 2.
    """

    def __init__(self, labels: np.ndarray, cubic: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.d = int(labels.max()) + 1
        self.onehot = np.eye(self.d)[labels.ravel()] / np.bincount(labels.ravel())
        self.b = rng.standard_normal(self.d)
        self.a = np.triu(rng.standard_normal((self.d, self.d)), 1) * 2.0
        self.cubic = cubic

    def features(self, x: np.ndarray) -> np.ndarray:
        return x[:, 0].reshape(len(x), -1).astype(np.float64) @ self.onehot

    def __call__(self, x: np.ndarray) -> np.ndarray:
        s = self.features(x)
        f = s @ self.b + np.einsum("ni,ij,nj->n", s, self.a, s) + self.cubic * s[:, 0] * s[:, 1] * s[:, 2]
        return np.stack([f, -f], axis=1)

    def shapley(self, x: np.ndarray) -> np.ndarray:
        s = self.features(x[None])[0]
        a = self.a + self.a.T
        phi = self.b * s + 0.5 * s * (a @ s)
        phi[:3] += self.cubic * s[0] * s[1] * s[2] / 3
        return phi


@pytest.mark.parametrize("n_permutations,antithetic", [(1, False), (2, True), (5, True), (3, False)])
@pytest.mark.parametrize("baseline", ["zero", "mean", 0.5])
def test_linear_model_gives_exact_values_for_any_number_of_permutations(
        small_linear, x32, n_permutations, antithetic, baseline):
    w, _, query = small_linear
    exp = explain(query, x32, "shapley", target=1, seed=3, n_permutations=n_permutations,
                  antithetic=antithetic, baseline=baseline, estimator="permutation")
    labels = exp.extras["segments"]
    np.testing.assert_array_equal(labels, grid_labels(32, 32, 7))
    contrib = (w[:, 1].reshape(x32.shape) * (x32 - make_baseline(x32, baseline))).sum(axis=0)
    expected = per_segment(contrib, labels)
    np.testing.assert_allclose(exp.extras["attributions"], expected, atol=1e-5)
    np.testing.assert_array_equal(exp.map, exp.extras["attributions"][labels])
    assert exp.n_queries == n_permutations * 48 + 2  # + the baseline + x itself


@pytest.mark.parametrize("estimator", ["kernel", "permutation"])
def test_efficiency_on_the_onnx_cnn(x32, estimator):
    model = load_model(model_path("tiny_cnn"), batch_size=16)
    exp = explain(model, x32, "shapley", seed=0, segments="grid", grid=4, n_permutations=5,
                  baseline="blur", estimator=estimator)
    f_x, f_base = model(np.stack([x32, make_baseline(x32, "blur")]))[:, exp.target]
    gap = exp.extras["attributions"].astype(np.float64).sum() - (f_x - f_base)
    assert abs(gap) < 1e-5 and abs(exp.extras["efficiency_gap"]) < 1e-5
    assert abs(f_x - f_base) > 1e-2  # not vacuous
    assert exp.extras["baseline_score"] == pytest.approx(f_base, abs=1e-6)
    # kernel: the 32 coalitions of sizes 1 and 15 listed, then 21 pairs of the 43 queries left
    assert exp.n_queries == (32 + 42 if estimator == "kernel" else 5 * 15) + 2


@pytest.mark.parametrize("n_permutations", [4, 5])
@pytest.mark.parametrize("estimator", ["kernel", "permutation", "leverage"])
def test_query_count_is_exact_and_the_full_input_is_never_requeried(x32, n_permutations,
                                                                    estimator):
    labels = grid_labels(32, 32, 4)
    rec = Recorder(SegmentModel(labels, cubic=1.0))
    exp = explain(rec, x32, "shapley", target=0, seed=1, n_permutations=n_permutations,
                  estimator=estimator)
    assert exp.n_queries == n_permutations * 48 + 2  # + the baseline + x itself
    seen = rec.seen
    assert len(seen) == n_permutations * 48 + 2  # + explain's own look at x
    assert (seen[1:] == x32).all(axis=(1, 2, 3)).sum() == 0
    assert (seen == 0).all(axis=(1, 2, 3)).sum() == 1  # the baseline, once


def test_antithetic_pairs_are_exact_for_pairwise_interactions():
    """In pi and reversed pi every pair (i, j) meets in both orders: the pair mean is exact."""
    x = np.random.default_rng(2).uniform(0.5, 1.5, (3, 32, 32)).astype(np.float32)
    labels = grid_labels(32, 32, 4)
    model = SegmentModel(labels, cubic=0.0)
    exp = explain(model, x, "shapley", target=0, seed=0, segments=labels, n_permutations=6,
                  estimator="permutation")
    np.testing.assert_allclose(exp.extras["attributions"], model.shapley(x), atol=1e-4)
    assert exp.extras["std_errors"].max() < 1e-4
    plain = explain(model, x, "shapley", target=0, seed=0, segments=labels, n_permutations=6,
                    antithetic=False, estimator="permutation")
    assert plain.extras["std_errors"].mean() > 0.05


@pytest.mark.parametrize("antithetic,n_permutations", [(False, 20), (True, 20), (True, 21)])
def test_standard_errors_match_the_spread_over_seeds(antithetic, n_permutations):
    """The reported SE estimates the estimator's real spread (60 seeds); estimates are unbiased."""
    x = np.random.default_rng(2).uniform(0.5, 1.5, (3, 32, 32)).astype(np.float32)
    labels = grid_labels(32, 32, 4)
    model = SegmentModel(labels, cubic=8.0)
    runs = [explain(model, x, "shapley", target=0, seed=s, segments=labels, antithetic=antithetic,
                    n_permutations=n_permutations, estimator="permutation").extras
            for s in range(60)]
    est = np.stack([r["attributions"] for r in runs]).astype(np.float64)
    se = np.stack([r["std_errors"] for r in runs]).astype(np.float64)
    spread = est.std(axis=0, ddof=1)
    ratio = se.mean(axis=0)[:3].mean() / spread[:3].mean()  # segments in the triple term
    assert 0.75 < ratio < 1.33
    bias = np.abs(est.mean(axis=0) - model.shapley(x))
    assert (bias < 4.5 * spread / np.sqrt(len(runs)) + 1e-4).all()


def test_antithetic_standard_error_is_lower_with_interactions():
    x = np.random.default_rng(2).uniform(0.5, 1.5, (3, 32, 32)).astype(np.float32)
    labels = grid_labels(32, 32, 4)
    model = SegmentModel(labels, cubic=8.0)
    se = {a: explain(model, x, "shapley", target=0, seed=4, segments=labels, n_permutations=40,
                     antithetic=a, estimator="permutation").extras["std_errors"]
          for a in (True, False)}
    assert se[True].mean() < 0.5 * se[False].mean()


def test_integer_label_array_as_segments(small_linear, x32):
    w, _, query = small_linear
    raw = (np.arange(32)[:, None] // 16) * 7 + (np.arange(32)[None, :] // 8) * 3 + 100
    exp = explain(query, x32, "shapley", target=2, seed=0, segments=raw, n_permutations=3,
                  estimator="permutation")
    labels = relabel(raw)
    np.testing.assert_array_equal(exp.extras["segments"], labels)
    expected = per_segment((w[:, 2].reshape(x32.shape) * x32).sum(axis=0), labels)
    np.testing.assert_allclose(exp.extras["attributions"], expected, atol=1e-5)
    assert exp.n_queries == 3 * 7 + 2
    for estimator in ("kernel", "permutation", "leverage"):
        one = explain(query, x32, "shapley", target=2, segments=np.zeros((32, 32), int),
                      estimator=estimator)
        assert one.n_queries == 2  # x and the baseline
        np.testing.assert_allclose(one.extras["attributions"], [expected.sum()], atol=1e-5)
    with pytest.raises(BlackboxError, match="shape"):
        explain(query, x32, "shapley", segments=np.zeros((16, 16), int))


def test_permutations_and_prefixes():
    rng = np.random.default_rng(0)
    perms = draw_permutations(rng, 5, 6, antithetic=True)
    assert perms.shape == (5, 6)
    np.testing.assert_array_equal(perms[1], perms[0][::-1])
    np.testing.assert_array_equal(np.sort(perms, axis=1), np.tile(np.arange(6), (5, 1)))
    keep = prefix_keep(ranks(perms), slice(0, 25))
    assert keep.shape == (25, 6)
    np.testing.assert_array_equal(keep.sum(axis=1), np.tile(np.arange(1, 6), 5))
    for p in range(5):  # prefix k of permutation p: exactly its first k segments
        for k in range(1, 6):
            np.testing.assert_array_equal(np.nonzero(keep[p * 5 + k - 1])[0], np.sort(perms[p, :k]))
    np.testing.assert_array_equal(prefix_keep(ranks(perms), slice(7, 12)), keep[7:12])


def test_bad_options_are_rejected(small_linear, x32):
    query = small_linear[2]
    with pytest.raises(BlackboxError, match="n_permutations"):
        explain(query, x32, "shapley", n_permutations=0)
    with pytest.raises(BlackboxError, match="segments"):
        explain(query, x32, "shapley", segments="voronoi")
    with pytest.raises(BlackboxError, match="--estimator 'owen'"):
        explain(query, x32, "shapley", estimator="owen")


# ---- the kernel estimator (paired KernelSHAP) against exact values -----------------------------
def game_values(query, x: np.ndarray, labels: np.ndarray, targets: list[int],
                baseline: str = "zero") -> dict[int, np.ndarray]:
    """{target: v (2^d,)}: v[code] = f_c(x with the segments of the bits of code shown, the
    rest baseline), every coalition queried."""
    d = int(labels.max()) + 1
    codes = np.arange(2 ** d)
    keep = ((codes[:, None] >> np.arange(d)) & 1).astype(bool)
    base = make_baseline(x, baseline)
    scores = np.concatenate([query(base + (x - base) * keep[rows][:, labels][:, None])
                             for rows in np.array_split(codes, max(1, 2 ** d // 2048))])
    return {t: scores[:, t].astype(np.float64) for t in targets}


def marginals(v: np.ndarray, d: int, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For player i: each coalition S without i, its Shapley weight |S|! (d - |S| - 1)! / d!
    (the chance that S precedes i in a random permutation), v(S + i) - v(S), and the same for
    the players that follow i there, N - S - i (those that precede it in the reverse)."""
    codes = np.arange(2 ** d)
    without = codes[(codes >> i) & 1 == 0]
    size = ((without[:, None] >> np.arange(d)) & 1).sum(axis=1)
    weight = np.array([math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d)
                       for k in range(d)])[size]
    after = (2 ** d - 1) ^ without ^ (1 << i)
    return weight, v[without | 1 << i] - v[without], v[after | 1 << i] - v[after]


def exact_shapley(query, x: np.ndarray, labels: np.ndarray, target: int | list[int],
                  baseline: str = "zero") -> np.ndarray | dict[int, np.ndarray]:
    """Shapley values by enumerating all 2^d coalitions: phi_i = sum_{S without i}
    |S|! (d - |S| - 1)! / d! (v(S + i) - v(S)), v(S) = f_c(x with S shown, the rest baseline).
    A list of targets gives {target: values} from the same 2^d queries."""
    d = int(labels.max()) + 1
    v = game_values(query, x, labels, target if isinstance(target, list) else [target], baseline)
    values = {t: np.array([(w * gain).sum() for w, gain, _ in
                           (marginals(v[t], d, i) for i in range(d))]) for t in v}
    return values if isinstance(target, list) else values[target]


def antithetic_permutation_mse(v: np.ndarray, d: int, n: int) -> float:
    """The antithetic permutation estimator's expected squared error, mean over players, exactly:
    n permutations are n // 2 pairs (pi, reverse pi) and, for odd n, one unpaired, so
    Var(phi_i) = (n // 2 Var(D + D') + (n % 2) Var(D)) / n^2, D = i's marginal contribution in
    pi, D' in its reverse (from :func:`marginals`)."""
    var = []
    for i in range(d):
        w, gain, reverse = marginals(v, d, i)
        phi = (w * gain).sum()
        single = (w * gain ** 2).sum() - phi ** 2
        pair = (w * (gain + reverse) ** 2).sum() - 4 * phi ** 2
        var.append(((n // 2) * pair + (n % 2) * single) / n ** 2)
    return float(np.mean(var))


@pytest.mark.parametrize("n_permutations", [3, 5])
@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("baseline", ["zero", 0.5])
def test_kernel_estimator_is_exact_on_a_linear_model(small_linear, x32, n_permutations,
                                                     antithetic, baseline):
    """Gains z^T phi exactly: the least squares fit is phi whatever coalitions were drawn (the
    98 listed ones of size 1 and 48 already determine it)."""
    w, _, query = small_linear
    exp = explain(query, x32, "shapley", target=1, seed=3, n_permutations=n_permutations,
                  antithetic=antithetic, baseline=baseline, estimator="kernel")
    contrib = (w[:, 1].reshape(x32.shape) * (x32 - make_baseline(x32, baseline))).sum(axis=0)
    expected = per_segment(contrib, exp.extras["segments"])
    np.testing.assert_allclose(exp.extras["attributions"], expected, atol=1e-5)
    assert exp.extras["std_errors"].max() < 1e-5
    assert exp.n_queries == n_permutations * 48 + 2 and exp.extras["n_coalitions"] == n_permutations * 48


@pytest.mark.parametrize("target", [0, 3])
def test_kernel_estimator_is_exact_when_the_budget_lists_every_coalition(x32, target):
    """2 x 2 grid: 5 permutations' budget (15) lists all 2^4 - 2 = 14 coalitions."""
    model = load_model(model_path("tiny_nonlinear"))
    labels = grid_labels(32, 32, 2)
    truth = exact_shapley(model, x32, labels, target)
    exp = explain(model, x32, "shapley", target=target, grid=2, n_permutations=5,
                  estimator="kernel")
    np.testing.assert_allclose(exp.extras["attributions"], truth, atol=1e-5)
    np.testing.assert_array_equal(exp.extras["std_errors"], 0)
    assert exp.n_queries == 14 + 2


@pytest.mark.parametrize("estimator", ["kernel", "leverage"])
def test_regression_estimator_without_a_sampled_coalition_has_no_error_bar(small_linear, x32,
                                                                          estimator):
    """Two segments, one permutation's budget (1 query): the pair {0} / {1} does not fit, so
    nothing is queried but the baseline and x; the values split the difference (still
    efficient) and the standard errors are unknown, not zero."""
    query = small_linear[2]
    halves = np.repeat(np.arange(2), 16)[None, :].repeat(32, axis=0)
    exp = explain(query, x32, "shapley", target=0, segments=halves, n_permutations=1,
                  estimator=estimator)
    assert exp.n_queries == 2 and exp.extras["n_coalitions"] == 0
    assert exp.extras["attributions"][0] == pytest.approx(exp.extras["attributions"][1], abs=1e-6)
    assert np.isnan(exp.extras["std_errors"]).all() and abs(exp.extras["efficiency_gap"]) < 1e-6


@pytest.mark.parametrize("estimator", ["kernel", "leverage"])
@pytest.mark.parametrize("n_permutations", [10, 21])
def test_regression_standard_errors_match_the_spread_over_seeds(estimator, n_permutations):
    """The sandwich standard errors estimate the real spread (60 seeds, 4 x 4 grid); the bias is
    within the noise, and the values are exactly efficient. Kernel (its fit is consistent,
    biased by O(1/n)): 10 permutations list 32 coalitions (sizes 1 and 15) and sample 59 pairs,
    21 list 32 and sample 141; mean SE / spread measured 0.84 and 0.96, largest |bias| /
    (spread / sqrt(60)) 3.2 and 2.0. Leverage (stratified): 75 pairs spread over the sizes, or
    157, with the interaction regressors and the shrinkage (the default; HC3 residuals,
    posterior standard deviations): mean SE / spread 0.90 and 1.03 (0.65 and 0.90 without HC3),
    largest |bias| / (spread / sqrt(60)) 1.8 and 2.1 (1.5 and 1.9 without the shrinkage)."""
    x = np.random.default_rng(2).uniform(0.5, 1.5, (3, 32, 32)).astype(np.float32)
    labels = grid_labels(32, 32, 4)
    model = SegmentModel(labels, cubic=8.0)
    runs = [explain(model, x, "shapley", target=0, seed=s, segments=labels, estimator=estimator,
                    n_permutations=n_permutations).extras for s in range(60)]
    est = np.stack([r["attributions"] for r in runs]).astype(np.float64)
    se = np.stack([r["std_errors"] for r in runs]).astype(np.float64)
    spread = est.std(axis=0, ddof=1)
    assert 0.75 < se.mean() / spread.mean() < 1.33
    bias = np.abs(est.mean(axis=0) - model.shapley(x))
    assert (bias < 4.5 * spread / np.sqrt(len(runs)) + 1e-4).all()
    np.testing.assert_allclose(est.sum(axis=1), model.shapley(x).sum(), atol=1e-4)


def enumerable_game():
    """tiny_nonlinear (Conv-ReLU-Conv-ReLU-GAP-Gemm) on a grid of 4 rows x 3 columns of cells:
    the game's values for two classes from all 2^12 coalitions (one enumeration for both), and
    a query that answers the estimators from that enumeration (the model's scores for a
    coalition, looked up: the estimators' 160 runs asked ONNX Runtime 2.3 s of questions that
    the enumeration had already answered)."""
    model = load_model(model_path("tiny_nonlinear"), batch_size=256)
    x = np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)
    labels = (np.arange(32) * 4 // 32)[:, None] * 3 + (np.arange(32) * 3 // 32)[None, :]
    everything = game_values(model, x, labels, list(range(model.num_classes)))
    table = np.stack([everything[t] for t in range(model.num_classes)], axis=1)
    first_pixel = [np.argwhere(labels == i)[0] for i in range(12)]

    def replayed(batch: np.ndarray) -> np.ndarray:
        """The scores of each input's coalition: a segment is shown where its first pixel is
        not the zero baseline (x is nowhere 0 there; hidden pixels are exactly 0)."""
        codes = sum((batch[:, 0, r, c] != 0).astype(np.int64) << i
                    for i, (r, c) in enumerate(first_pixel))
        return table[codes].astype(np.float32)

    assert all(x[0, r, c] != 0 for r, c in first_pixel)
    return replayed, x, labels, {t: everything[t] for t in (0, 3)}


#: measured MSE(estimator, 20 seeds) / the antithetic permutations' expected MSE (exact), at
#: (class, budget in permutations) (see the test)
MEASURED_MSE_RATIO = {
    "kernel": {(0, 10): 0.64, (0, 25): 0.16, (3, 10): 0.58, (3, 25): 0.14},
    "leverage": {(0, 10): 0.21, (0, 25): 0.050, (3, 10): 0.22, (3, 25): 0.044},
}
#: queries each estimator uses of a budget b (the kernel lists sizes 1 and 11, 24 coalitions,
#: then pairs; leverage draws b // 2 pairs)
USED = {"kernel": lambda b: 24 + (b - 24) // 2 * 2, "leverage": lambda b: b // 2 * 2}


def test_regression_estimators_beat_permutations_at_equal_queries_on_the_enumerable_game():
    """Mean squared error against the exact values, at the same budget for every estimator
    (the default 25 permutations, 277 queries, and 10, 112 queries), for classes 0 and 3, as a
    ratio to antithetic permutations' expected error, computed exactly from the enumeration
    (20 sampled runs of it measured 0.81-1.06x that). Fails when an estimator's ratio grows
    by a quarter of what was measured, or to 0.95. At 25 the permutation estimator has one
    unpaired permutation, whose pairwise-interaction noise the pairs do not cancel: the
    regression estimators' lead is largest there. 12 players keep the enumeration at 4096
    queries (on a 4 x 4 grid, 65536 queries, the kernel's ratios measured 0.75, 0.25, 0.89 and
    0.35 against sampled permutations: the same ordering); every case is one test so that the
    enumeration happens once, not once per test or xdist worker.

    Not so for the kernel on every real image: EfficientNet-Lite0, 7 x 7 grid, against a
    400-permutation truth (10 seeds, tools/bench/bench_shapley.py), the kernel estimator's MSE
    on the cat was 4.1x the permutation estimator's at 10 permutations' budget (482 queries)
    and 2.3x at 25 (1202), on coffee and rocket 0.87-0.90x and 0.57-0.60x; the leverage
    estimator (the default) fits within sizes and was 0.42-0.67x there, 0.23-0.44x with the
    interaction regressors and the shrinkage. Here, against 20 sampled permutation runs, the
    leverage fit without them measured 0.45, 0.10, 0.36 and 0.076, with the first two families
    of regressors 0.25, 0.053, 0.27 and 0.042, with all 0.23, 0.051, 0.27, 0.041 (the
    shrinkage changes nothing here)."""
    query, x, labels, games = enumerable_game()
    truth = {t: np.array([(w * gain).sum() for w, gain, _ in
                          (marginals(v, 12, i) for i in range(12))]) for t, v in games.items()}
    ratios = {}
    for target, n_permutations in sorted(MEASURED_MSE_RATIO["kernel"]):
        permutation_mse = antithetic_permutation_mse(games[target], 12, n_permutations)
        for estimator in MEASURED_MSE_RATIO:
            runs = [explain(query, x, "shapley", target=target, seed=s, segments=labels,
                            estimator=estimator, n_permutations=n_permutations)
                    for s in range(20)]
            assert {r.n_queries for r in runs} == {USED[estimator](n_permutations * 11) + 2}
            mse = np.mean([(r.extras["attributions"] - truth[target]) ** 2 for r in runs])
            ratios[estimator, target, n_permutations] = mse / permutation_mse
    limits = {(e, *k): min(v * 1.25, 0.95) for e, m in MEASURED_MSE_RATIO.items()
              for k, v in m.items()}
    assert all(ratios[k] < limits[k] for k in limits), (ratios, limits)


@pytest.mark.parametrize("estimator", ["kernel", "leverage"])
def test_regression_estimators_are_seeded_and_batch_size_invariant(x32, estimator):
    maps = [explain(load_model(model_path("tiny_cnn"), batch_size=b), x32, "shapley", seed=3,
                    target=1, n_permutations=4, estimator=estimator).map for b in (1, 7, 64)]
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps[0], maps[2], rtol=1e-5, atol=1e-6)
    other = explain(load_model(model_path("tiny_cnn")), x32, "shapley", seed=4, target=1,
                    n_permutations=4, estimator=estimator).map
    assert not np.array_equal(other, maps[0])


# ---- the leverage estimator (Leverage SHAP sampling, regression within sizes) ----------------
def test_leverage_counts_fill_every_size_equally_and_list_what_fits():
    strata = PairStrata.of(49)
    counts = leverage_counts(strata, 600, exact_smallest=True)
    assert counts.sum() == 600 and counts[0] == 49  # sizes 1 and 48 listed: 49 pairs
    assert set(counts[1:]) <= {23, 24}  # the other 551 pairs spread over 23 strata
    free = leverage_counts(strata, 600, exact_smallest=False)
    assert free.sum() == 600 and set(free) <= {25}  # 24 strata of two sizes each
    d4 = PairStrata.of(4)  # sizes {1, 3}: 4 pairs; the middle size 2: 3 pairs
    np.testing.assert_array_equal(d4.units, [4, 3])
    np.testing.assert_allclose(d4.mass, [8 / 11, 3 / 11])  # kernel: 1/3, 1/4, 1/3, normalised
    np.testing.assert_array_equal(leverage_counts(d4, 100, False), [4, 3])  # all listed
    np.testing.assert_array_equal(leverage_counts(d4, 3, False), [2, 1])  # the middle: half
    sqrt = leverage_counts(PairStrata.of(49, "sqrt"), 600, exact_smallest=True)
    assert sqrt.sum() == 600 and (np.diff(sqrt[1:]) <= 0).all() and sqrt[1] > 2 * sqrt[-1]


@pytest.mark.parametrize("d,k,n", [(49, 2, 300), (49, 7, 200), (10, 5, 126), (9, 3, 84)])
def test_distinct_subsets_are_distinct_uniform_and_avoid_complements(d, k, n):
    middle = 2 * k == d
    rows = distinct_subsets(np.random.default_rng(0), d, k, n, middle)
    assert rows.shape == (n, d) and (rows.sum(axis=1) == k).all()
    assert len(np.unique(rows, axis=0)) == n
    if middle:  # all hold segment d-1: no row is another's complement; 126 = C(10,5) / 2
        assert rows[:, -1].all()
    if n == math.comb(d, k):  # every subset: each segment in k / d of them
        np.testing.assert_allclose(rows.mean(axis=0), k / d)


@pytest.mark.parametrize("free, k", [(1, 1), (6, 3), (12, 1), (12, 11), (15, 7), (49, 3), (7, 0)])
def test_subsets_are_unranked_in_the_order_of_itertools_combinations(free, k):
    listed = list(combinations(range(free), k))
    index = np.random.default_rng(free + k).choice(len(listed), min(len(listed), 200), replace=False)
    rows = lexicographic_subsets(np.sort(index), free, k)
    want = np.zeros_like(rows)
    for r, i in enumerate(np.sort(index)):
        want[r, list(listed[i])] = True
    np.testing.assert_array_equal(rows, want)


def test_leverage_pairs_weights_are_the_kernel_mass_of_their_size():
    sample = leverage_pairs(np.random.default_rng(0), 1200, 49)
    keep = sample.keep
    np.testing.assert_array_equal(keep[0::2], ~keep[1::2])  # (S, complement) pairs
    size = keep.sum(axis=1)
    mass = np.bincount(size, weights=sample.weight, minlength=50)[1:49]
    np.testing.assert_allclose(mass, shapley_kernel_sizes(49))
    assert len(keep) == 1200 and len(np.unique(keep, axis=0)) == 1200


def test_within_sizes_removes_each_size_mean():
    keep = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
    v = np.array([1.0, 3.0, 10.0, 14.0, 12.0])
    (out,) = within_sizes(keep, v)
    np.testing.assert_allclose(out, [-1, 1, -2, 2, 0])


@pytest.mark.parametrize("n_permutations", [3, 5])
@pytest.mark.parametrize("baseline", ["zero", 0.5])
def test_leverage_estimator_is_exact_on_a_linear_model(small_linear, x32, n_permutations,
                                                       baseline):
    """Gains z^T phi: zero residuals, so the fit within sizes is phi (the pairs drawn, less
    their size's mean, span every direction but 1, which efficiency fixes)."""
    w, _, query = small_linear
    exp = explain(query, x32, "shapley", target=1, seed=3, n_permutations=n_permutations,
                  baseline=baseline, estimator="leverage")
    contrib = (w[:, 1].reshape(x32.shape) * (x32 - make_baseline(x32, baseline))).sum(axis=0)
    expected = per_segment(contrib, exp.extras["segments"])
    np.testing.assert_allclose(exp.extras["attributions"], expected, atol=1e-5)
    assert exp.extras["std_errors"].max() < 1e-5
    assert exp.n_queries == n_permutations * 48 + 2


def test_leverage_estimator_is_efficient_on_the_onnx_cnn(x32):
    model = load_model(model_path("tiny_cnn"), batch_size=16)
    exp = explain(model, x32, "shapley", seed=0, grid=4, n_permutations=5, baseline="blur",
                  estimator="leverage")
    f_x, f_base = model(np.stack([x32, make_baseline(x32, "blur")]))[:, exp.target]
    gap = exp.extras["attributions"].astype(np.float64).sum() - (f_x - f_base)
    assert abs(gap) < 1e-5 and abs(exp.extras["efficiency_gap"]) < 1e-5
    assert abs(f_x - f_base) > 1e-2
    assert exp.n_queries == 74 + 2  # 75 coalitions' budget: 37 pairs


def test_the_interaction_regressors_need_two_rows_per_column():
    """16 grid cells, 3 families of 16 regressors each: 64 columns. With 126 rows (under 2 per
    column) the fit is the additive one; with 130 it is not."""
    near = segment_neighbours(grid_labels(32, 32, 4))
    for budget, additive in ((126, True), (130, False)):
        sample = leverage_pairs(np.random.default_rng(0), budget, 16)
        assert len(sample.keep) == budget
        gains = np.random.default_rng(1).standard_normal(budget) + sample.keep.sum(axis=1)
        fits = [leverage_shap(sample, gains, 16.0, near=near, extra=extra, shrinkage=False)[0]
                for extra in (EXTRA, ())]
        assert np.array_equal(fits[0], fits[1]) == additive


def test_no_shrinkage_gives_the_regression_values(monkeypatch):
    """``shrinkage=False`` returns the fit's values as they are: the same sample refitted with
    leverage_shap(shrinkage=False); the default moves them (on this noisy game), keeping their
    sum."""
    import blackbox_xai.methods.shapley as shapley_module

    seen = []
    real = shapley_module.leverage_shap
    monkeypatch.setattr(shapley_module, "leverage_shap",
                        lambda *a, **k: seen.append((a, k)) or real(*a, **k))
    x = np.random.default_rng(2).uniform(0.5, 1.5, (3, 32, 32)).astype(np.float32)
    labels = grid_labels(32, 32, 4)
    model = SegmentModel(labels, cubic=8.0)
    runs = [explain(model, x, "shapley", target=0, seed=0, segments=labels, n_permutations=10,
                    shrinkage=shrink).extras["attributions"] for shrink in (True, False)]
    (args, kwargs), _ = seen
    np.testing.assert_allclose(runs[1], real(*args, **{**kwargs, "shrinkage": False})[0],
                               rtol=1e-6, atol=1e-6)
    assert np.abs(runs[0] - runs[1]).max() > 1e-3  # 0.033 measured: beyond float rounding
    assert runs[0].sum() == pytest.approx(runs[1].sum(), abs=1e-5)


@pytest.mark.parametrize("target", [0, 3])
def test_leverage_estimator_is_exact_when_the_budget_lists_every_coalition(x32, target):
    """2 x 2 grid: 15 coalitions' budget lists all 7 pairs; within sizes the full fit is exact."""
    model = load_model(model_path("tiny_nonlinear"))
    truth = exact_shapley(model, x32, grid_labels(32, 32, 2), target)
    exp = explain(model, x32, "shapley", target=target, grid=2, n_permutations=5,
                  estimator="leverage")
    np.testing.assert_allclose(exp.extras["attributions"], truth, atol=1e-5)
    np.testing.assert_array_equal(exp.extras["std_errors"], 0)
    assert exp.n_queries == 14 + 2


@pytest.mark.parametrize("size_effects", [True, False])
def test_leverage_fit_with_every_coalition_is_the_shapley_value(size_effects):
    """6 players, all 31 pairs listed: the kernel-weighted fit, within sizes or not, is exact on
    a game with pairwise and triple interactions (closed-form values, SegmentModel)."""
    x = np.random.default_rng(5).uniform(0.5, 1.5, (3, 32, 32)).astype(np.float32)
    labels = (np.arange(32) * 2 // 32)[:, None] * 3 + (np.arange(32) * 3 // 32)[None, :]
    model = SegmentModel(labels, cubic=4.0)
    sample = leverage_pairs(np.random.default_rng(0), 62, 6)
    assert len(sample.keep) == 62 and (sample.counts == sample.units).all()
    v = model(x[None] * sample.keep[:, labels][:, None])[:, 0]
    f_x, f_base = model(np.stack([x, 0 * x]))[:, 0]
    phi, se = leverage_shap(sample, v - f_base, f_x - f_base, size_effects=size_effects)
    np.testing.assert_allclose(phi, model.shapley(x), atol=1e-9)
    np.testing.assert_array_equal(se, 0)


def all_coalitions(d: int) -> np.ndarray:
    """(2^d, d): row m keeps the players of the bits of m."""
    return (np.arange(2 ** d)[:, None] >> np.arange(d) & 1).astype(bool)


def enumerated_shapley(v: np.ndarray, d: int) -> np.ndarray:
    """Shapley values of the game v (2^d,) indexed by bitmask, by the permutation formula:
    sum over S not holding i of |S|! (d - |S| - 1)! / d! (v(S + i) - v(S))."""
    size = all_coalitions(d).sum(axis=1)
    weight = np.array([math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d)
                       if k < d else 0.0 for k in size])
    phi = np.zeros(d)
    for i in range(d):
        out = np.flatnonzero((np.arange(2 ** d) >> i & 1) == 0)
        phi[i] = (weight[out] * (v[out | 1 << i] - v[out])).sum()
    return phi


def test_segment_neighbours_are_the_segments_sharing_a_border():
    near = segment_neighbours(grid_labels(32, 32, 3))
    expected = np.zeros((9, 9), bool)
    for i in range(9):
        for j in range(9):
            expected[i, j] = abs(i // 3 - j // 3) + abs(i % 3 - j % 3) == 1  # no corners
    np.testing.assert_array_equal(near, expected)
    labels = np.array([[0, 0, 1], [2, 2, 1], [2, 3, 3]])  # 0 touches 1 and 2, 3 touches 1, 2
    np.testing.assert_array_equal(segment_neighbours(labels).astype(int),
                                  [[0, 1, 1, 0], [1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 0]])


def test_interaction_regressors_have_the_stated_shapley_values():
    """size_slopes, neighbour_triples and size_neighbour_products: each regressor, as a game on
    all 2^8 coalitions, has the Shapley values the functions state (the permutation formula,
    enumerated)."""
    d = 8
    keep = all_coalitions(d)
    near = np.zeros((d, d), bool)
    for i, j in [(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (1, 5), (6, 7), (2, 6)]:
        near[i, j] = near[j, i] = True
    for reg in (size_slopes(keep), neighbour_triples(keep, near),
                size_neighbour_products(keep, near)):
        assert reg.x.shape == (2 ** d, d) and np.ptp(reg.x, axis=0).min() > 0  # not vacuous
        for f in range(d):
            np.testing.assert_allclose(reg.shapley[f], enumerated_shapley(reg.x[:, f], d),
                                       atol=1e-12)


@pytest.mark.parametrize("ridge", [0.0, 0.3, 50.0])
@pytest.mark.parametrize("size_effects", [True, False])
def test_leverage_fit_with_interactions_is_exact_when_every_coalition_is_listed(ridge,
                                                                                size_effects):
    """3 x 3 segments, all 255 pairs listed: the fit with the interaction regressors (any ridge,
    within sizes or not) returns the exact Shapley values of a game with interactions of every
    order (pairs, triples, a saturating function of a weighted sum, a sine), enumerated."""
    d = 9
    rng = np.random.default_rng(11)
    z = all_coalitions(d).astype(np.float64)
    v = (z @ rng.normal(size=d) + np.einsum("ni,ij,nj->n", z, rng.normal(size=(d, d)), z)
         + 3 * np.tanh(z @ rng.uniform(0, 1, d) - 1) + np.sin(z @ rng.normal(size=d))
         + 2 * z[:, 0] * z[:, 4] * z[:, 8])
    truth = enumerated_shapley(v, d)
    sample = leverage_pairs(np.random.default_rng(0), 2 ** d - 2, d)
    assert (sample.counts == sample.units).all()
    rows = sample.keep @ (1 << np.arange(d))
    near = segment_neighbours(grid_labels(32, 32, 3))
    phi, se = leverage_shap(sample, v[rows] - v[0], v[-1] - v[0], size_effects=size_effects,
                            near=near, ridge=ridge)
    np.testing.assert_allclose(phi, truth, atol=1e-9)
    np.testing.assert_array_equal(se, 0)
    # not vacuous: the additive fit on a quarter of the pairs is not exact, and the regressors
    # change it
    part = leverage_pairs(np.random.default_rng(1), 120, d)
    rows = part.keep @ (1 << np.arange(d))
    with_x = leverage_shap(part, v[rows] - v[0], v[-1] - v[0], near=near, ridge=ridge)[0]
    without = leverage_shap(part, v[rows] - v[0], v[-1] - v[0], extra=(), shrinkage=False)[0]
    assert np.abs(without - truth).max() > 1e-3 and np.abs(with_x - without).max() > 1e-6
    assert with_x.sum() == pytest.approx(v[-1] - v[0], abs=1e-9)


def test_smooth_prior_on_a_grid_is_exp_minus_the_manhattan_distance():
    rc = np.divmod(np.arange(12), 3)  # 4 rows x 3 columns
    manhattan = np.abs(rc[0][:, None] - rc[0]) + np.abs(rc[1][:, None] - rc[1])
    labels = (np.arange(32) * 4 // 32)[:, None] * 3 + (np.arange(32) * 3 // 32)[None, :]
    prior = smooth_prior(segment_neighbours(labels), 12)
    np.testing.assert_allclose(prior, np.exp(-manhattan), atol=1e-12)
    np.testing.assert_array_equal(smooth_prior(None, 5), np.eye(5))
    two_parts = np.zeros((4, 4), bool)  # {0, 1} and {2, 3}: unconnected, correlation 0
    two_parts[0, 1] = two_parts[1, 0] = two_parts[2, 3] = two_parts[3, 2] = True
    assert smooth_prior(two_parts, 4)[0, 2] == 0 and smooth_prior(two_parts, 4)[0, 1] > 0.3


def test_shrinkage_is_the_gaussian_posterior_at_the_maximum_likelihood_scale():
    """shrink against an independent computation in another basis of the sum-free subspace
    (Helmert's): the marginal log-likelihood by slogdet over the same grid of tau^2, then
    posterior mean tau^2 C (tau^2 C + S)^-1 y and covariance tau^2 C - tau^2 C (tau^2 C +
    S)^-1 tau^2 C. The sum is kept; a covariance of 0 leaves the values as they are, and the
    shift vanishes with the noise (here in proportion to it)."""
    d = 9
    rng = np.random.default_rng(3)
    centre = np.eye(d) - 1.0 / d
    a = centre @ rng.normal(size=(d, 40))
    cov = a @ a.T / 40 * 0.3
    prior = smooth_prior(segment_neighbours(grid_labels(32, 32, 3)), d)
    phi = rng.normal(size=d) + 1.0
    post, sd = shrink(phi, cov, prior)
    helmert = np.zeros((d, d - 1))
    for j in range(1, d):
        helmert[:j, j - 1], helmert[j, j - 1] = 1.0, -float(j)
    helmert /= np.linalg.norm(helmert, axis=0)
    y = helmert.T @ phi
    c, s = helmert.T @ prior @ helmert, helmert.T @ cov @ helmert
    taus = y @ y / (d - 1) * np.geomspace(1e-4, 1e2, 121)
    loglik = [-np.linalg.slogdet(t * c + s)[1] - y @ np.linalg.solve(t * c + s, y) for t in taus]
    t = taus[int(np.argmax(loglik))]
    assert 1e-4 * taus[-1] < t < taus[-1]  # an inner maximum: the test is not vacuous
    gain = t * c @ np.linalg.inv(t * c + s)
    np.testing.assert_allclose(post, phi.mean() + helmert @ gain @ y, atol=1e-10)
    post_cov = helmert @ (t * c - gain @ (t * c)) @ helmert.T
    np.testing.assert_allclose(sd, np.sqrt(np.diag(post_cov)), atol=1e-10)
    assert post.sum() == pytest.approx(phi.sum(), abs=1e-12) and np.abs(post - phi).max() > 0.05
    np.testing.assert_array_equal(shrink(phi, 0 * cov, prior)[0], phi)
    shift = [np.abs(shrink(phi, eps * cov, prior)[0] - phi).max() for eps in (1e-4, 1e-6)]
    assert 0 < shift[1] < 0.02 * shift[0] < 1e-4


def test_shrinkage_lowers_the_error_and_its_standard_deviations_are_calibrated():
    """A smooth truth on a 5 x 5 grid (a drift plus a blob), estimates with correlated noise of
    known covariance (400 draws, about as noisy as the truth varies): the shrunk values' mean
    squared error is below 0.5x the raw ones' (measured 0.30), the root mean square of the
    errors in posterior standard deviations within 0.7-1.2 (measured 0.87; in the raw ones'
    standard deviations 0.56: those would overstate the error)."""
    d, g = 25, 5
    r, c = np.divmod(np.arange(d), g)
    truth = 0.1 * r + np.exp(-((r - 1.5) ** 2 + (c - 3) ** 2) / 2)
    rng = np.random.default_rng(4)
    centre = np.eye(d) - 1.0 / d
    a = centre @ rng.normal(size=(d, 60))
    cov = a @ a.T / 60 * truth.var()
    prior = smooth_prior(segment_neighbours(grid_labels(40, 40, g)), d)
    noise = rng.multivariate_normal(np.zeros(d), cov, size=400)
    raw, shrunk, z = [], [], []
    for e in noise:
        post, sd = shrink(truth + e, cov, prior)
        raw.append(np.mean(e ** 2))
        shrunk.append(np.mean((post - truth) ** 2))
        z.append(np.mean((post - truth) ** 2 / sd ** 2))
    assert np.mean(shrunk) < 0.5 * np.mean(raw)
    assert 0.7 < np.sqrt(np.mean(z)) < 1.2


@pytest.mark.parametrize("collinear", [1e-9, 1e-7, 1e-6])
def test_the_constrained_fit_keeps_efficiency_with_nearly_collinear_regressors(collinear):
    """Regressors collinear to 1e-7 leave a KKT singular value of 1e-15 of the largest (the
    normal equations square the condition number): a pseudo-inverse cutoff at 1e-15 kept that
    rounding noise and the fit missed its constraint 1^T theta = total by 1.8e-2, with
    coefficients of 4e5; the efficiency of every regression Shapley estimate rests on it (seen:
    Leverage SHAP 6e-4 off under numpy 2.5.2 on a case exact under 2.4)."""
    from blackbox_xai.methods.shapley_regression import constrained_fit

    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 12))
    z = np.concatenate([base, base[:, :3] + collinear * rng.normal(size=(400, 3))], axis=1)
    weight = rng.uniform(1e-3, 2e-2, 400)
    gains = base @ rng.normal(size=12) + 0.1 * rng.normal(size=400)
    theta, _ = constrained_fit(z, weight, gains, 5.0)
    assert theta.sum() == pytest.approx(5.0, abs=1e-9)
    assert np.abs(theta).max() < 10
