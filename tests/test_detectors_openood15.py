"""OpenOOD v1.5's other activation detectors (ash, scale, gen, mds, rmds, she, nnguide, fdbd,
nci, vra, relation, residual): each against a plain float64 NumPy reference written from its
formula, on random banks of odd sizes over several seeds, in blocks of any size; then what they
must do: rank a clearly-OOD cluster below ID, change with their settings, refuse what cannot
be fitted in one line, search OpenOOD's grids, and be nameable where detectors are named."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.linalg

from sio.core.config import ConfigError
from sio.evaluate import ActivationBank, DetectorError, evaluate_bank
from sio.evaluate.config import ALL_DETECTORS, EvaluateConfig, NnguideSettings, SearchSettings
from sio.evaluate.detectors import DETECTORS, base, fit_detector, neighbours, shaping
from sio.evaluate.search import ood_split, search_activation_detector
from sio.pipeline.config import load_pipeline

from .test_detectors_reference import auroc, f64, logits, logsumexp, softmax

SEEDS = range(4)
OPENOOD15 = (
    *("ash", "scale", "gen", "mds", "rmds", "she"),
    *("nnguide", "fdbd", "nci", "vra", "relation", "residual"),
)
# settings the small random banks need (NNGuide's default bank, 1% of ID train, holds 3 rows)
SMALL = {"nnguide": {"k": 3, "alpha": 0.1}}


def random_bank(seed: int, dtype=np.float64) -> tuple[ActivationBank, np.ndarray]:
    """K classes, D features: |class mean + noise| (continuous, so no ties in any top-k), a
    full-rank fc with a bias (about the nearest-mean classifier); queries = ID test then an
    OOD set around other centres."""
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 9))
    width = int(rng.integers(classes + 4, 37))
    means = np.abs(rng.normal(0, 1, (classes, width))) * rng.uniform(1, 3)

    def draw(n, centres=None):
        labels = np.arange(n) % classes  # every class present
        rng.shuffle(labels)
        centre = means[labels] if centres is None else centres
        return np.abs(centre + rng.normal(0, 0.7, (n, width))).astype(dtype), labels

    train, y_train = draw(int(rng.integers(width + 40, 301)))
    val, y_val = draw(int(rng.integers(classes * 3, 157)))
    test, y_test = draw(int(rng.integers(20, 113)))
    ood, _ = draw(int(rng.integers(20, 97)), centres=rng.uniform(0, 1.5, width))
    # nearly the nearest-mean classifier, so every class has correctly classified train rows
    weight = means + rng.normal(0, 0.05, (classes, width))
    bias = -0.5 * (means**2).sum(axis=1) + rng.normal(0, 0.3, classes)
    bank = ActivationBank(
        weight.astype(dtype),
        bias.astype(dtype),
        {"train": train, "val": val, "test": test},
        {"train": y_train, "val": y_val, "test": y_test},
        {"near": {"ood": ood}},
    )
    return bank, np.concatenate([test, ood])


# --- the references: float64, straight from the formulas -----------------------------------


def train64(bank):
    return f64(bank.id_features["train"])


def kept(width, percentile):
    return width - int(np.round(width * percentile / 100))


def ref_ash(bank, h, percentile=90.0):
    h = f64(h)
    k = kept(h.shape[1], percentile)
    shaped = np.zeros_like(h)
    for row, out in zip(h, shaped, strict=True):
        out[np.argsort(row)[::-1][:k]] = row.sum() / k
    return logsumexp(logits(bank, shaped))


def ref_scale(bank, h, percentile=85.0):
    h = f64(h)
    k = kept(h.shape[1], percentile)
    top = np.sort(h, axis=1)[:, ::-1][:, :k].sum(axis=1)
    return logsumexp(logits(bank, h * np.exp(h.sum(axis=1) / top)[:, None]))


def ref_vra(bank, h, percentile_high=90.0, percentile_low=10.0):
    val = f64(bank.id_features["val"]).ravel()
    low, high = np.percentile(val, percentile_low), np.percentile(val, percentile_high)
    return logsumexp(logits(bank, np.minimum(np.maximum(f64(h), low), high)))


def ref_gen(bank, h, gamma=0.1, m=100):
    z = logits(bank, h)
    lse = logsumexp(z)[:, None]
    p = np.exp(z - lse)
    # 1 - p_k = sum_{j != k} p_j, exactly: exp(logsumexp of the other logits - logsumexp(z))
    rest = np.array([[logsumexp(np.delete(row, k)[None])[0] for k in range(len(row))] for row in z])
    q = np.exp(rest - lse)
    order = np.argsort(p, axis=1)[:, ::-1][:, :m]
    p, q = np.take_along_axis(p, order, 1), np.take_along_axis(q, order, 1)
    return -(p**gamma * q**gamma).sum(axis=1)


def class_mean_rows(bank):
    train, labels = train64(bank), bank.id_labels["train"]
    return np.array([train[labels == k].mean(axis=0) for k in range(len(bank.fc_bias))])


def mahalanobis(h, mean, precision):
    d = f64(h) - mean
    return np.einsum("nd,de,ne->n", d, precision, d)


def ref_mds(bank, h):
    means, train = class_mean_rows(bank), train64(bank)
    centred = train - means[bank.id_labels["train"]]
    precision = scipy.linalg.pinvh(centred.T @ centred / len(train))
    return np.max([-mahalanobis(h, mu, precision) for mu in means], axis=0)


def ref_rmds(bank, h):
    train = train64(bank)
    mean = train.mean(axis=0)
    background = scipy.linalg.pinvh(np.cov(train, rowvar=False, bias=True))
    return ref_mds(bank, h) + mahalanobis(h, mean, background)


def ref_she(bank, h, metric="inner_product"):
    train, labels = train64(bank), bank.id_labels["train"]
    correct = logits(bank, train).argmax(axis=1) == labels
    classes = range(len(bank.fc_bias))
    patterns = np.array([train[correct & (labels == k)].mean(axis=0) for k in classes])
    pattern = patterns[logits(bank, h).argmax(axis=1)]
    h = f64(h)
    if metric == "euclidean":
        return -np.sqrt(((h - pattern) ** 2).sum(axis=1))
    inner = (h * pattern).sum(axis=1)
    if metric == "cosine":
        return inner / np.linalg.norm(h, axis=1) / np.linalg.norm(pattern, axis=1)
    return inner


def unit(x):
    x = f64(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_nnguide(bank, h, k, alpha, rows=None):
    train = train64(bank)
    if rows is None:  # floor(alpha N) rows spread evenly over the file
        n = int(np.floor(alpha * len(train)))
        rows = [i * len(train) // n for i in range(n)]
    held = train[rows]
    guide = unit(held) * logsumexp(logits(bank, held))[:, None]
    similarity = unit(h) @ guide.T
    top = np.sort(similarity, axis=1)[:, ::-1][:, :k]
    return top.mean(axis=1) * logsumexp(logits(bank, h))


def ref_fdbd(bank, h, distance_as_normalizer=True):
    z, w, h = logits(bank, h), f64(bank.fc_weight), f64(h)
    mean = train64(bank).mean(axis=0)
    scores = []
    for z_i, h_i in zip(z, h, strict=True):
        top = z_i.argmax()
        total = sum(
            abs(z_i[top] - z_i[c]) / np.linalg.norm(w[top] - w[c])
            for c in range(len(z_i))
            if c != top
        )
        scores.append(total / np.linalg.norm(h_i - (mean if distance_as_normalizer else 0)))
    return np.array(scores)


def ref_nci(bank, h, alpha=0.0001):
    z, w, h = logits(bank, h), f64(bank.fc_weight), f64(h)
    centred = h - train64(bank).mean(axis=0)
    aligned = (w[z.argmax(axis=1)] * centred).sum(axis=1) / np.linalg.norm(centred, axis=1)
    return aligned + alpha * np.abs(h).sum(axis=1)


def ref_relation(bank, h, power=1.0):
    train = train64(bank)
    edges = np.maximum(unit(h) @ unit(train).T, 0) * (
        softmax(logits(bank, h)) @ softmax(logits(bank, train)).T
    )
    return np.where(edges > 0.03, edges, 0) ** power @ np.ones(len(train))


def ref_residual(bank, h, dim=None, split="train"):
    width = bank.fc_weight.shape[1]
    dim = width // 2 if dim is None else dim  # D < 512 here: VIM's rule, D // 2
    origin = -np.linalg.pinv(f64(bank.fc_weight)) @ f64(bank.fc_bias)
    fit = f64(bank.id_features[split]) - origin
    values, vectors = np.linalg.eigh(fit.T @ fit / len(fit))
    space = vectors[:, np.argsort(values)[::-1][dim:]]
    return -np.linalg.norm((f64(h) - origin) @ space, axis=1)


REFERENCES = {
    "ash": ref_ash,
    "scale": ref_scale,
    "gen": ref_gen,
    "mds": ref_mds,
    "rmds": ref_rmds,
    "she": ref_she,
    "nnguide": lambda bank, h: ref_nnguide(bank, h, **SMALL["nnguide"]),
    "fdbd": ref_fdbd,
    "nci": ref_nci,
    "vra": ref_vra,
    "relation": ref_relation,
    "residual": ref_residual,
}


def fitted(name, bank, **settings):
    return DETECTORS.get(name)(**{**SMALL.get(name, {}), **settings}).fit(bank)


def assert_matches(scores, expected, rtol=1e-9):
    assert scores.dtype == np.float64 and scores.shape == expected.shape
    np.testing.assert_allclose(scores, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", OPENOOD15)
def test_float64_features_match_the_reference(name, seed):
    bank, queries = random_bank(seed)
    scores = fitted(name, bank).score(queries)
    expected = REFERENCES[name](bank, queries)
    assert_matches(scores, expected)
    assert auroc(bank, scores) == pytest.approx(auroc(bank, expected), abs=1e-12)


# Relation's edges are cut at 0.03: float32 rounding may move an edge across it (a jump of
# 0.03), so it is compared in float64 only
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", [n for n in OPENOOD15 if n != "relation"])
def test_float32_features_match_the_reference_to_float32_rounding(name, seed):
    bank, queries = random_bank(seed, np.float32)
    scores = fitted(name, bank).score(queries)
    assert_matches(scores, REFERENCES[name](bank, queries), rtol=5e-5)


SETTINGS = {
    "ash": [{"percentile": 65.0}, {"percentile": 95.0}, {"percentile": 0.0}],
    "scale": [{"percentile": 65.0}, {"percentile": 95.0}],
    "gen": [{"gamma": 2.0, "m": 1}, {"gamma": 0.01, "m": 2}, {"gamma": 10.0, "m": 1000}],
    "she": [{"metric": "euclidean"}, {"metric": "cosine"}],
    "fdbd": [{"distance_as_normalizer": False}],
    "nci": [{"alpha": 0.1}, {"alpha": 0.0}],
    "vra": [
        {"percentile_high": 99.0, "percentile_low": 1.0},
        {"percentile_high": 85.0, "percentile_low": 15.0},
    ],
    "relation": [{"power": 2.0}, {"power": 8.0}],
    "residual": [{"dim": 1}, {"dim": 3}],
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("name", "settings"), [(name, s) for name, grid in SETTINGS.items() for s in grid]
)
def test_other_settings_match_the_reference_and_change_the_scores(name, settings, seed):
    bank, queries = random_bank(seed)
    scores = fitted(name, bank, **settings).score(queries)
    assert_matches(scores, REFERENCES[name](bank, queries, **settings))
    width = queries.shape[1]
    if name in ("ash", "scale") and kept(width, settings["percentile"]) == fitted(name, bank).kept:
        return  # D is small: this percentile keeps as many entries as the default
    assert not np.allclose(scores, fitted(name, bank).score(queries))


@pytest.mark.parametrize("seed", SEEDS)
def test_nnguide_bank_settings_match_the_reference(seed):
    bank, queries = random_bank(seed)
    n = len(bank.id_features["train"])
    detector = fitted("nnguide", bank, k=5, alpha=0.25)
    assert_matches(detector.score(queries), ref_nnguide(bank, queries, 5, 0.25))
    # OpenOOD's bank: whole batches of 16 rows from the start until more than floor(0.1 N)
    held = 16 * (int(0.1 * n) // 16 + 1)
    openood = fitted("nnguide", bank, loader_batch=16)
    assert openood.info()["bank_rows"] == held > int(0.1 * n)
    assert_matches(openood.score(queries), ref_nnguide(bank, queries, 3, 0.1, rows=range(held)))


@pytest.mark.parametrize("seed", SEEDS)
def test_residual_fitted_on_id_val_as_openood_matches_the_reference(seed):
    bank, queries = random_bank(seed)
    scores = fitted("residual", bank, split="val").score(queries)
    assert_matches(scores, ref_residual(bank, queries, split="val"))
    assert not np.allclose(scores, fitted("residual", bank).score(queries))


@pytest.mark.parametrize("name", OPENOOD15)
def test_blocks_of_any_size_give_the_same_scores(name, monkeypatch):
    # every fit and score streams over rows: blocks of one or seven values/rows (many blocks,
    # a short last one) give the reference's scores, and the bank is left as it was
    bank, queries = random_bank(3)
    before = {split: f.copy() for split, f in bank.id_features.items()}
    monkeypatch.setattr(base, "BLOCK_VALUES", 7)
    monkeypatch.setattr(shaping, "SHAPE_ROWS", 7)
    monkeypatch.setattr(neighbours, "QUERY_CHUNK", 5)
    monkeypatch.setattr(neighbours, "TRAIN_BLOCK", 7)
    assert_matches(fitted(name, bank).score(queries), REFERENCES[name](bank, queries))
    for split, features in before.items():
        np.testing.assert_array_equal(bank.id_features[split], features)


# --- what each detector must do ---------------------------------------------------------------


def separated_bank(seed=0, dtype=np.float32) -> ActivationBank:
    """ID: 4 classes on 16 axes, class k active (5 + noise) on axes k, k + 4 and k + 8, noise
    (|N(0, 0.4)|) elsewhere; W_k = 1 on its class's axes, b = 0. Two clearly-OOD clusters:
    ``off``, of ID's norm but on the spare axes 12-15 (off the classes' span, logits near 0),
    and ``faint``, weaker noise alone (half ID's spread)."""
    rng = np.random.default_rng(seed)
    classes, width = 4, 16
    patterns = np.zeros((classes, width))
    for k in range(classes):
        patterns[k, [k, k + 4, k + 8]] = 1.0

    def noise(n, spread=0.4):
        return np.abs(rng.normal(0, spread, (n, width)))

    def id_set(n):
        labels = np.arange(n) % classes
        return (5 * patterns[labels] + noise(n)).astype(dtype), labels

    features, labels = {}, {}
    for split, n in (("train", 1200), ("val", 200), ("test", 200)):
        features[split], labels[split] = id_set(n)
    off = noise(150)
    off[:, 12:] += 5 * np.sqrt(3 / 4) + rng.normal(0, 0.4, (150, 4))
    return ActivationBank(
        patterns.astype(dtype),
        np.zeros(classes, dtype),
        features,
        labels,
        {"far": {"off": off.astype(dtype), "faint": noise(150, 0.2).astype(dtype)}},
    )


SEPARATED = EvaluateConfig(nnguide=NnguideSettings(k=5))  # its bank: 1% of 1,200 rows
# a residual sees only what is off the ID span, not a cluster of small features within it
CLEARLY_OOD = {"residual": ("off",)}


@pytest.mark.parametrize("name", OPENOOD15)
def test_a_clearly_ood_cluster_ranks_below_id(name):
    bank = separated_bank()
    results = evaluate_bank(bank, [name], config=SEPARATED)["metrics"][name]["far"]["datasets"]
    detector = fit_detector(name, bank, SEPARATED)
    id_scores = detector.score(bank.id_features["test"])
    for ood in CLEARLY_OOD.get(name, ("off", "faint")):
        assert results[ood]["auroc"] > 99, ood
        # and in the direction the scores have: ID higher
        assert np.median(id_scores) > np.median(detector.score(bank.ood["far"][ood]))


def test_mds_is_affine_invariant_and_rmds_removes_the_background():
    # Mahalanobis distances do not change when features are mapped by an invertible A (and W
    # by A^-T, so logits stay): MDS's and RMDS's scores are the same on the mapped bank
    bank, queries = random_bank(1)
    rng = np.random.default_rng(5)
    width = queries.shape[1]
    mix = np.eye(width) + 0.3 * rng.normal(size=(width, width))
    mapped = dataclasses.replace(
        bank,
        fc_weight=bank.fc_weight @ np.linalg.inv(mix),
        id_features={s: f @ mix.T for s, f in bank.id_features.items()},
    )
    for name in ("mds", "rmds"):
        np.testing.assert_allclose(
            fitted(name, mapped).score(queries @ mix.T),
            fitted(name, bank).score(queries),
            rtol=1e-7,
        )
    # RMDS - MDS is the background term alone: MD_0(h) >= 0, 0 only at the train mean
    mean = bank.id_features["train"].mean(axis=0, keepdims=True)
    gap = fitted("rmds", bank).score(mean) - fitted("mds", bank).score(mean)
    np.testing.assert_allclose(gap, [0.0], atol=1e-9)


def test_gen_m_above_the_classes_is_all_of_them():
    bank, queries = random_bank(2)
    classes = len(bank.fc_bias)
    everything = fitted("gen", bank, m=classes).score(queries)
    np.testing.assert_array_equal(fitted("gen", bank, m=1000).score(queries), everything)
    assert not np.allclose(fitted("gen", bank, m=1).score(queries), everything)


def test_ash_and_scale_by_hand():
    # h = [4, 3, 2, 1], p = 50: k = 4 - round(2) = 2 kept. ASH-B: [5, 5, 0, 0] (sum 10 / 2);
    # SCALE: h * exp(10 / 7). W = I (4 classes), b = 0.
    h = np.array([[4.0, 3.0, 2.0, 1.0]])
    bank = ActivationBank(
        np.eye(4),
        np.zeros(4),
        {s: h for s in ("train", "val", "test")},
        {s: np.array([0]) for s in ("train", "val", "test")},
        {"near": {"x": h}},
    )
    ash = fitted("ash", bank, percentile=50.0).score(h)
    np.testing.assert_allclose(ash, [np.log(2 * np.exp(5.0) + 2)], rtol=1e-12)
    scale = fitted("scale", bank, percentile=50.0).score(h)
    np.testing.assert_allclose(scale, logsumexp(h * np.exp(10 / 7)), rtol=1e-12)


@pytest.mark.parametrize("name", OPENOOD15)
def test_zero_feature_vectors_score_finitely(name):
    # a dead-ReLU row (h = 0): OpenOOD's SCALE divides 0 by 0 there
    bank, queries = random_bank(0, np.float32)
    zeros = np.zeros((2, queries.shape[1]), np.float32)
    scores = fitted(name, bank).score(np.concatenate([zeros, queries]))
    assert np.isfinite(scores).all()


# --- errors: one line naming the detector and the cause --------------------------------------


def test_fits_that_cannot_be_made_are_one_line_errors():
    bank, _ = random_bank(0)
    labels = bank.id_labels["train"].copy()
    labels[labels == 1] = 0  # class 1 has no train rows
    no_class = dataclasses.replace(bank, id_labels={**bank.id_labels, "train": labels})
    for name in ("mds", "rmds", "she"):
        with pytest.raises(DetectorError, match=rf"^detector {name} on id\.train: class 1 has no"):
            fit_detector(name, no_class)
    width = bank.fc_weight.shape[1]
    cases = [
        ("nnguide", {"k": 100}, r"k = 100 exceeds the bank's \d+ rows"),
        ("residual", {"dim": width}, rf"dim {width} must be in \[1, D\)"),
        ("ash", {"percentile": 99.9}, r"keeps none of the D = \d+ features"),
    ]
    for name, settings, message in cases:
        with pytest.raises(DetectorError, match=rf"^detector {name} on .*{message}"):
            DETECTORS.get(name)(**settings).fit(bank)
    twin = bank.fc_weight.copy()
    twin[1] = twin[0]
    with pytest.raises(DetectorError, match=r"^detector fdbd on id\.train: classes 0 and 1"):
        fit_detector("fdbd", dataclasses.replace(bank, fc_weight=twin))


# --- names, defaults, grids -------------------------------------------------------------------

GRIDS = {
    "ash": {"percentile": [65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0]},
    "scale": {"percentile": [65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0]},
    "gen": {"gamma": [0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0], "m": [10, 50, 100, 200, 500, 1000]},
    "fdbd": {"distance_as_normalizer": [True, False]},
    "nci": {"alpha": [0.0001, 0.001, 0.01, 0.1]},
    "vra": {"percentile_high": [85.0, 90.0, 95.0, 99.0], "percentile_low": [1.0, 5.0, 10.0, 15.0]},
    "relation": {"power": [1.0, 2.0, 4.0, 6.0, 8.0]},
}
DEFAULTS = {
    "ash": {"percentile": 90.0},
    "scale": {"percentile": 85.0},
    "gen": {"gamma": 0.1, "m": 100},
    "she": {"metric": "inner_product"},
    "nnguide": {"k": 100, "alpha": 0.01},
    "fdbd": {"distance_as_normalizer": True},
    "nci": {"alpha": 0.0001},
    "vra": {"percentile_high": 90.0, "percentile_low": 10.0},
    "relation": {"power": 1.0},
    "residual": {"dim": None},
}


def test_registered_under_openood_keys_with_openood_defaults_and_grids():
    assert set(OPENOOD15) <= set(DETECTORS.names())
    assert EvaluateConfig().detectors == ALL_DETECTORS  # the paper's twelve, unchanged
    assert not set(OPENOOD15) & set(ALL_DETECTORS)
    config = EvaluateConfig()
    for name in OPENOOD15:
        cls = DETECTORS.get(name)
        assert "(" in cls.__doc__ and "20" in cls.__doc__, f"{name}: cite the paper and year"
        grid = {key: list(values) for key, values in cls.search_grid.items()}
        assert grid == GRIDS.get(name, {}), name
        section = getattr(config, name, None)
        assert (dataclasses.asdict(section) if section else {}) == DEFAULTS.get(name, {}), name


def test_the_config_and_evaluate_accept_every_name(tmp_path):
    path = tmp_path / "pipeline.yaml"
    names = ", ".join(OPENOOD15)
    settings = "gen: {m: 5}, vra: {percentile_low: 5}"
    path.write_text(f"evaluate: {{detectors: [{names}], {settings}}}\n")
    config = load_pipeline(path).evaluate
    assert config.detectors == OPENOOD15 and config.gen.m == 5 and config.vra.percentile_low == 5
    path.write_text("evaluate: {vra: {percentile_low: 95}}\n")
    with pytest.raises(ConfigError, match="percentile_high"):
        load_pipeline(path)
    bank = separated_bank()
    config = dataclasses.replace(config, nnguide=SEPARATED.nnguide)
    results = evaluate_bank(bank, list(OPENOOD15), config=config)
    assert list(results["metrics"]) == list(OPENOOD15) and not results["skipped"]
    assert results["detectors"]["gen"]["m"] == 5


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_the_search_tries_openood_grid_and_keeps_the_best(name):
    bank = separated_bank(dtype=np.float64)
    ood = bank.ood["far"]["off"]
    mixed = {**bank.ood, "near": {"mix": (ood + bank.id_features["test"][: len(ood)]) / 2}}
    bank = dataclasses.replace(bank, ood=mixed)
    config = EvaluateConfig(search=SearchSettings(enabled=True, ood_val_fraction=0.3))
    detector, entry = search_activation_detector(name, bank, config, ood_split(bank, config.search))
    tried = [{k: v for k, v in c.items() if k != "val_auroc"} for c in entry["candidates"]]
    assert tried == DETECTORS.get(name).search_settings(bank) and len(tried) >= 2
    best = max(c["val_auroc"] for c in entry["candidates"])
    first = next(c for c in entry["candidates"] if c["val_auroc"] == best)
    assert entry["chosen"] == {k: v for k, v in first.items() if k != "val_auroc"}
    for key, value in entry["chosen"].items():
        assert getattr(detector, key) == value


def test_ash_and_scale_grids_drop_percentiles_that_keep_nothing():
    bank, _ = random_bank(0)
    narrow = dataclasses.replace(
        bank,
        fc_weight=bank.fc_weight[:, :8],
        id_features={s: f[:, :8] for s, f in bank.id_features.items()},
        ood={"near": {"ood": bank.ood["near"]["ood"][:, :8]}},
    )
    # D = 8: p = 95 keeps 8 - round(7.6) = 0 entries; every other grid value keeps >= 1
    for name in ("ash", "scale"):
        kept_grid = [s["percentile"] for s in DETECTORS.get(name).search_settings(narrow)]
        assert kept_grid == [65.0, 70.0, 75.0, 80.0, 85.0, 90.0]
