import math

import numpy as np
import pytest
import torch

from skipdit_kernels.evaluation.metrics import (
    DigitClassifier,
    classifier_accuracy,
    fidelity,
    frechet_distance,
    psnr,
    ssim,
    worst_mean,
)
from skipdit_kernels.training.data import digits_split, load_digits_tensors


def test_psnr_known_values_and_identical():
    a = torch.zeros(3, 1, 4, 4)
    assert psnr(a, a + 0.1) == pytest.approx(10 * math.log10(4 / 0.01))
    assert psnr(a, a) == math.inf
    per = psnr(a, torch.cat([a[:1], a[1:] + 0.2]), reduction="none")
    assert per[0] == math.inf and per[1] == pytest.approx(10 * math.log10(4 / 0.04))
    assert psnr(a, a + 0.1, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.01))
    with pytest.raises(ValueError):
        psnr(a, a[:2])


def test_psnr_pooled_is_one_mse_over_all_pairs():
    a = torch.zeros(4, 1, 4, 4)
    errors = torch.tensor([1e-4, 1e-4, 1e-4, 1.0])  # one badly-off image
    b = a + errors.sqrt()[:, None, None, None]
    assert psnr(a, b, reduction="pooled") == pytest.approx(10 * math.log10(4 / errors.mean().item()))
    assert psnr(a, b) == pytest.approx(float(np.mean([10 * math.log10(4 / e) for e in errors.tolist()])))
    assert psnr(a, b, reduction="pooled") < psnr(a, b) - 10  # the outlier dominates the pooled value
    with pytest.raises(ValueError, match="reduction"):
        psnr(a, b, reduction="sum")


def test_worst_mean_and_fidelity_summary():
    values = torch.arange(100, dtype=torch.float64)  # 0..99
    assert worst_mean(values) == pytest.approx(2.0)  # mean of 0..4: the worst 5 of 100
    assert worst_mean(values, higher_is_better=False) == pytest.approx(97.0)
    assert worst_mean(values[:10]) == pytest.approx(0.0)  # at least one sample
    assert worst_mean(values[:30], 0.1) == pytest.approx(1.0)  # 3 of 30
    with pytest.raises(ValueError, match="fraction"):
        worst_mean(values, 0)
    with pytest.raises(ValueError, match="1-d"):
        worst_mean(values[None])

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(20, 1, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(ref.shape, generator=g) * torch.linspace(0.01, 0.5, 20)[:, None, None, None]
    out = ref + noise
    r = fidelity(out, ref)
    per_psnr, per_ssim = psnr(out, ref, reduction="none"), ssim(out, ref, reduction="none")
    assert r["worst_count"] == 1
    assert r["psnr_mean"] == pytest.approx(float(per_psnr.mean()))
    assert r["psnr_pooled"] == pytest.approx(psnr(out, ref, reduction="pooled"))
    assert r["psnr_worst"] == pytest.approx(float(per_psnr.min()))
    assert r["ssim_mean"] == pytest.approx(ssim(out, ref)) and r["ssim_worst"] == pytest.approx(float(per_ssim.min()))
    assert r["psnr_worst"] < r["psnr_pooled"] < r["psnr_mean"]


def test_ssim_identical_is_one_and_symmetric():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    assert 0 < ssim(a, b) < 0.95
    # constant images: SSIM reduces to the luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = (0.01 * 2) ** 2
    x, y = torch.full((1, 1, 8, 8), 0.5), torch.full((1, 1, 8, 8), -0.5)
    assert ssim(x, y) == pytest.approx((2 * -0.25 + c1) / (0.5 + c1))


def test_frechet_distance_known_values():
    g = np.random.default_rng(0)
    f = g.normal(size=(500, 8))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    shift = np.arange(8) * 0.1
    # same covariance, shifted mean: exactly |shift|^2
    assert frechet_distance(f, f + shift) == pytest.approx(float((shift**2).sum()), rel=1e-6)
    # scaled: ||0||^2 + Tr(S + 4S - 2*2S) = Tr(S)
    s = np.cov(f, rowvar=False)
    assert frechet_distance(f, 2 * (f - f.mean(0)) + f.mean(0)) == pytest.approx(np.trace(s), rel=1e-6)
    assert frechet_distance(torch.from_numpy(f), torch.from_numpy(f)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(f, f[:, :4])


def test_classifier_accuracy_counts():
    clf = DigitClassifier().eval()
    x = torch.zeros(6, 1, 16, 16)
    pred = clf(x).argmax(1)
    labels = pred.clone()
    labels[:3] = (labels[:3] + 1) % 10
    assert classifier_accuracy(clf, x, labels) == pytest.approx(0.5)


def test_digits_data():
    x, y = load_digits_tensors()
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert y.shape == (1797,) and set(y.tolist()) == set(range(10))
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() > 0.9
    x8, _ = load_digits_tensors(size=8)
    # bilinear upscaling keeps the mean intensity (up to the edges) of the 8x8 originals
    assert torch.allclose(x.mean((1, 2, 3)), x8.mean((1, 2, 3)), atol=0.05)
    (xtr, ytr), (xte, yte) = digits_split()
    assert len(xtr) + len(xte) == 1797 and abs(len(xte) - 0.2 * 1797) < 10
    assert (torch.bincount(yte, minlength=10) > 30).all()
