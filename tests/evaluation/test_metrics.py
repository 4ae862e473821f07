import numpy as np
import pytest
from sklearn import metrics as skm

from deepfake_jax.evaluation import metrics


def test_eer_on_a_hand_checked_example():
    # Scores sorted: reals 0.1 0.2 0.3 0.6, fakes 0.4 0.7 0.8 0.9. At a threshold in (0.4, 0.6]
    # one real of four is above (FPR 0.25) and one fake of four below (FNR 0.25): EER = 0.25.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    eer, threshold = metrics.equal_error_rate(labels, scores)
    assert eer == pytest.approx(0.25)
    assert 0.4 <= threshold <= 0.7


def test_eer_perfect_separation_is_zero():
    labels = np.array([0, 0, 1, 1])
    eer, threshold = metrics.equal_error_rate(labels, np.array([0.1, 0.2, 0.8, 0.9]))
    assert eer == 0.0
    assert 0.2 < threshold <= 0.8


def test_binary_metrics_match_sklearn_and_threshold_is_applied():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 500), 0, 1)
    m = metrics.binary_metrics(labels, scores, threshold=0.6)
    preds = scores >= 0.6
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(labels, scores))
    assert m["accuracy"] == pytest.approx(np.mean(preds == labels))
    tn, fp, fn, tp = skm.confusion_matrix(labels, preds).ravel()
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["precision"] == pytest.approx(tp / (tp + fp))


def test_threshold_methods_and_one_class_split():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.45, 0.55, 0.9])
    assert 0.45 <= metrics.choose_threshold(labels, scores, "eer") <= 0.55
    assert metrics.choose_threshold(labels, scores, "max_f1") == pytest.approx(0.55)
    assert metrics.choose_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3])) == 0.5
    with pytest.raises(ValueError, match="eer, max_f1 or fixed"):
        metrics.choose_threshold(labels, scores, "best")
    m = metrics.binary_metrics(np.zeros(3, int), np.array([0.1, 0.7, 0.2]), 0.5)
    assert m["roc_auc"] is None and m["accuracy"] == pytest.approx(2 / 3)


def test_plots_are_written(tmp_path):
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.6, 0.7, 0.9, 0.3, 0.4])
    m = metrics.binary_metrics(labels, scores, 0.5) | metrics.calibration(labels, scores)
    paths = metrics.save_plots(labels, scores, m, str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == [
        "confusion_matrix.png", "pr.png", "reliability.png", "roc.png", "score_histogram.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_expected_calibration_error_by_hand():
    # Bin [0.1, 0.2): scores 0.1, 0.1, labels 0, 1 -> |0.5 - 0.1| weight 2/4.
    # Bin [0.9, 1.0]: scores 0.9, 0.9, labels 1, 1 -> |1.0 - 0.9| weight 2/4.
    cal = metrics.calibration(np.array([0, 1, 1, 1]), np.array([0.1, 0.1, 0.9, 0.9]))
    assert cal["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert [r["count"] for r in cal["reliability"]] == [2, 2]
    perfect = metrics.calibration(np.array([0, 1]), np.array([0.0, 1.0]))
    assert perfect["ece"] == pytest.approx(0.0)


def test_bootstrap_intervals_contain_the_estimate_and_are_seeded():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(labels * 0.4 + rng.normal(0.3, 0.2, 300), 0, 1)
    ci = metrics.bootstrap_intervals(labels, scores, 0.5, num_samples=200, seed=3)
    auc = skm.roc_auc_score(labels, scores)
    assert ci["roc_auc"][0] < auc < ci["roc_auc"][1]
    assert ci["roc_auc"][1] - ci["roc_auc"][0] < 0.15
    assert ci == metrics.bootstrap_intervals(labels, scores, 0.5, num_samples=200, seed=3)


def test_subset_metrics_ciplab_difficulty_and_regions():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.9, 0.3, 0.8])
    metas = [{}, {}, {},
             {"difficulty": "easy", "edited": [1, 0, 0, 1]},
             {"difficulty": "hard", "edited": [0, 0, 1, 0]},
             {"difficulty": "easy", "edited": [1, 1, 0, 0]}]
    rows = {(r["subset"], r["value"]): r for r in
            metrics.subset_metrics(labels, scores, 0.5, metas)}
    assert set(rows) == {("difficulty", "easy"), ("difficulty", "hard"), ("edited", "left_eye"),
                         ("edited", "right_eye"), ("edited", "nose"), ("edited", "mouth")}
    easy = rows[("difficulty", "easy")]
    assert (easy["num_fake"], easy["num_real"]) == (2, 3)
    assert easy["roc_auc"] == pytest.approx(1.0) and easy["fake_detected"] == 1.0
    hard = rows[("difficulty", "hard")]  # 0.3 beats reals 0.1 and 0.2, loses to 0.6
    assert hard["roc_auc"] == pytest.approx(2 / 3) and hard["fake_detected"] == 0.0
    assert rows[("edited", "left_eye")]["num_fake"] == 2
    assert metrics.subset_metrics(labels, scores, 0.5, [{}] * 6) == []


@pytest.mark.parametrize("cm", [[[304, 196], [214, 286]],  # balanced, a middling model
                                [[798, 152], [8, 42]],     # unbalanced
                                [[9, 7], [4, 12]],          # small counts, min far from 0
                                [[5, 5], [5, 5]]])          # one colour everywhere
def test_confusion_matrix_counts_contrast_with_their_cells(cm):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    image, texts = metrics.draw_confusion_matrix(ax, np.array(cm))
    fig.canvas.draw()  # the colours as rendered
    drawn = image.make_image(fig.canvas.get_renderer(), unsampled=True)[0]
    for text, v in zip(texts, np.ravel(cm), strict=True):
        i, j = int(round(text.get_position()[1])), int(round(text.get_position()[0]))
        cell = drawn[i, j, :3] / 255.0
        assert text.get_text() == str(v)
        assert metrics.contrast_ratio(mcolors.to_rgb(text.get_color()), cell) >= 4.5, (v, cell)
    plt.close(fig)


def test_contrast_ratio_matches_wcag():
    assert metrics.contrast_ratio((0, 0, 0), (1, 1, 1)) == pytest.approx(21.0)
    assert metrics.contrast_ratio((1, 1, 1), (1, 1, 1)) == pytest.approx(1.0)
    assert metrics.text_colour_on((0.03, 0.19, 0.42)) == "white"  # Blues' darkest
    assert metrics.text_colour_on((0.97, 0.98, 1.0)) == "black"  # Blues' lightest
