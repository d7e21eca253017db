"""fer.losses: class weights (VGG16 + CBAM eq. 5, MAPNet eq. 5) and the class-weighted cross-entropy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import fer.train
from fer.losses import ClassWeightedCrossEntropy, inverse_frequency_weights, root_inverse_weights

# FER2013 training split as the VGG16 + CBAM paper tabulates it (Figure 6), canonical order.
FER2013_COUNTS = {"anger": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "neutral": 4965, "sad": 4830,
                  "surprise": 3171}


# ----------------------------------------------------------------------------- weights


def test_inverse_frequency_weights_equation5_fer2013():
    w = inverse_frequency_weights(FER2013_COUNTS)
    assert w.dtype == torch.float32 and w.shape == (7,)
    assert sum(FER2013_COUNTS.values()) == 28709
    by_hand = [28709 / (7 * n) for n in FER2013_COUNTS.values()]
    assert w.tolist() == pytest.approx(by_hand, rel=1e-6)
    assert float(w[1]) == pytest.approx(9.40662, abs=1e-5)  # disgust: 28709 / 3052
    assert float(w[3]) == pytest.approx(0.56844, abs=1e-5)  # happy: 28709 / 50505
    assert torch.equal(inverse_frequency_weights([5, 5, 5]), torch.ones(3))


def test_root_inverse_weights_by_hand():
    # N_avg = 250: omega = (250 / N_i) ** (1 / gamma)
    assert root_inverse_weights([100, 400], 2).tolist() == pytest.approx([math.sqrt(2.5), math.sqrt(0.625)])
    assert root_inverse_weights([100, 400], gamma=3).tolist() == pytest.approx([2.5 ** (1 / 3), 0.625 ** (1 / 3)])
    assert root_inverse_weights([100, 400], 0.5).tolist() == pytest.approx([6.25, 0.390625])
    assert root_inverse_weights([100, 400], 1).tolist() == pytest.approx([2.5, 0.625])
    assert root_inverse_weights([7, 7, 7, 7], 1.7).tolist() == pytest.approx([1.0] * 4)
    assert root_inverse_weights([100, 400], 2).dtype == torch.float32


def test_root_with_gamma_1_is_equation5():
    assert torch.allclose(root_inverse_weights(FER2013_COUNTS, 1.0), inverse_frequency_weights(FER2013_COUNTS))


def test_larger_gamma_flattens_the_weights():
    spread = [float(w.max() / w.min()) for w in (root_inverse_weights(FER2013_COUNTS, g) for g in (0.5, 1, 2, 3))]
    assert spread == sorted(spread, reverse=True) and spread[-1] > 1.0


@pytest.mark.parametrize("gamma", [0.5, 3, 3.0])
def test_gamma_bounds_are_inclusive(gamma):
    assert torch.isfinite(root_inverse_weights([1, 2], gamma)).all()


@pytest.mark.parametrize("gamma", [0.49, 3.01, 0, -1, float("nan"), float("inf")])
def test_gamma_outside_the_papers_range_is_an_error(gamma):
    with pytest.raises(ValueError, match=r"gamma must be in \[0\.5, 3\.0\]"):
        root_inverse_weights([1, 2], gamma)


def test_gamma_must_be_a_number():
    with pytest.raises(TypeError, match="gamma must be a number"):
        root_inverse_weights([1, 2], "two")


@pytest.mark.parametrize("fn", [inverse_frequency_weights, lambda c: root_inverse_weights(c, 2)])
def test_zero_count_names_the_class_and_the_fix(fn):
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have no training samples.*drop those classes"):
        fn([3, 0, 2])
    with pytest.raises(ValueError, match=r"class\(es\) \['disgust', 'fear'\] have no training samples"):
        fn({"anger": 3, "disgust": 0, "fear": 0})
    with pytest.raises(ValueError, match=r"class\(es\) \[0\] have a negative count"):
        fn(np.array([-1, 2]))
    with pytest.raises(ValueError, match="one count per class"):
        fn([])
    with pytest.raises(ValueError, match="one count per class"):
        fn([[1, 2], [3, 4]])


def test_mapping_keeps_the_order_given():
    # N = 4, K = 2: 4 / (2 * 1) = 2 for "b", 4 / (2 * 3) = 2/3 for "a"; not sorted by key.
    assert inverse_frequency_weights({"b": 1, "a": 3}).tolist() == pytest.approx([2.0, 2 / 3])
    assert root_inverse_weights({"b": 1, "a": 3}, 1).tolist() == pytest.approx([2.0, 2 / 3])


@pytest.mark.parametrize("counts", [
    [3995, 436, 4097],
    (3995, 436, 4097),
    {"x": 3995, "y": 436, "z": 4097},
    np.array([3995, 436, 4097], dtype=np.int64),
    np.array([3995.0, 436.0, 4097.0]),
    torch.tensor([3995, 436, 4097]),
    torch.tensor([3995.0, 436.0, 4097.0], dtype=torch.float64),
])
def test_every_counts_container_gives_float32_weights(counts):
    total = 3995 + 436 + 4097
    expected = [total / (3 * n) for n in (3995, 436, 4097)]
    w = inverse_frequency_weights(counts)
    assert w.dtype == torch.float32 and w.tolist() == pytest.approx(expected, rel=1e-6)
    r = root_inverse_weights(counts, 2)
    assert r.dtype == torch.float32 and r.tolist() == pytest.approx([math.sqrt(e) for e in expected], rel=1e-6)


def test_fer_train_still_exports_class_weights_inverse():
    assert fer.train.class_weights_inverse is inverse_frequency_weights
    assert "class_weights_inverse" in fer.train.__all__
    assert fer.train.class_weights_inverse([1, 3]).tolist() == pytest.approx([2.0, 2 / 3])


# ----------------------------------------------------------------------------- the loss

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, -2.0, 0.5]])
TARGET = torch.tensor([0, 1, 1, 2])
WEIGHT = [1.0, 2.0, 0.5]


def _neg_log_softmax(row: list[float]) -> list[float]:
    log_z = math.log(sum(math.exp(v) for v in row))
    return [log_z - v for v in row]


def _by_hand(normalize: str, smoothing: float = 0.0) -> float:
    """Both reductions written out from the definitions, in plain Python."""
    k, total, weight_sum = len(WEIGHT), 0.0, 0.0
    for row, y in zip(LOGITS.tolist(), TARGET.tolist(), strict=True):
        nls = _neg_log_softmax(row)
        if normalize == "batch":  # Keras: the sample's smoothed CE times its class weight
            total += WEIGHT[y] * ((1 - smoothing) * nls[y] + smoothing / k * sum(nls))
        else:  # PyTorch: every class term weighted by its own class's weight
            smooth = sum(w * v for w, v in zip(WEIGHT, nls, strict=True))
            total += (1 - smoothing) * WEIGHT[y] * nls[y] + smoothing / k * smooth
        weight_sum += WEIGHT[y]
    return total / (len(TARGET) if normalize == "batch" else weight_sum)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("normalize", ["batch", "weights"])
def test_loss_equals_the_hand_computation(normalize, smoothing):
    loss = ClassWeightedCrossEntropy(WEIGHT, normalize=normalize, label_smoothing=smoothing)
    assert float(loss(LOGITS, TARGET)) == pytest.approx(_by_hand(normalize, smoothing), rel=1e-6)


def test_batch_mean_divides_by_the_batch_size_weights_mean_by_the_weights():
    per_sample = [WEIGHT[y] * _neg_log_softmax(r)[y] for r, y in zip(LOGITS.tolist(), TARGET.tolist(), strict=True)]
    batch = ClassWeightedCrossEntropy(WEIGHT)(LOGITS, TARGET)  # default: Keras
    weights = ClassWeightedCrossEntropy(WEIGHT, normalize="weights")(LOGITS, TARGET)
    assert float(batch) == pytest.approx(sum(per_sample) / 4, rel=1e-6)
    assert float(weights) == pytest.approx(sum(per_sample) / (1.0 + 2.0 + 2.0 + 0.5), rel=1e-6)
    assert float(batch) == pytest.approx(float(weights) * 5.5 / 4, rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_weights_normalisation_is_torch_cross_entropy(smoothing):
    torch.manual_seed(0)
    logits, target = torch.randn(6, 3, 5, 4), torch.randint(0, 3, (6, 5, 4))  # spatial targets too
    target[0, 0, 0] = -100
    ours = ClassWeightedCrossEntropy(WEIGHT, normalize="weights", label_smoothing=smoothing)
    ref = nn.CrossEntropyLoss(weight=torch.tensor(WEIGHT), label_smoothing=smoothing)
    assert torch.allclose(ours(logits, target), ref(logits, target))


def test_reductions_none_and_sum():
    per_sample = [WEIGHT[y] * _neg_log_softmax(r)[y] for r, y in zip(LOGITS.tolist(), TARGET.tolist(), strict=True)]
    for normalize in ("batch", "weights"):
        none = ClassWeightedCrossEntropy(WEIGHT, normalize=normalize, reduction="none")(LOGITS, TARGET)
        assert none.shape == (4,) and none.tolist() == pytest.approx(per_sample, rel=1e-6)
        total = ClassWeightedCrossEntropy(WEIGHT, normalize=normalize, reduction="sum")(LOGITS, TARGET)
        assert float(total) == pytest.approx(sum(per_sample), rel=1e-6)


def test_ignore_index_is_left_out_of_both_means():
    target = TARGET.clone()
    target[1] = -100
    kept = [0, 2, 3]
    per_sample = [WEIGHT[int(TARGET[i])] * _neg_log_softmax(LOGITS[i].tolist())[int(TARGET[i])] for i in kept]
    batch = ClassWeightedCrossEntropy(WEIGHT)(LOGITS, target)
    weights = ClassWeightedCrossEntropy(WEIGHT, normalize="weights")(LOGITS, target)
    assert float(batch) == pytest.approx(sum(per_sample) / 3, rel=1e-6)
    assert float(weights) == pytest.approx(sum(per_sample) / (1.0 + 2.0 + 0.5), rel=1e-6)


def test_without_weights_both_are_plain_cross_entropy():
    plain = nn.CrossEntropyLoss()(LOGITS, TARGET)
    for normalize in ("batch", "weights"):
        assert torch.allclose(ClassWeightedCrossEntropy(normalize=normalize)(LOGITS, TARGET), plain)


def test_gradients_flow_and_follow_the_weights():
    logits = LOGITS.clone().requires_grad_(True)
    ClassWeightedCrossEntropy(WEIGHT)(logits, TARGET).backward()
    assert torch.isfinite(logits.grad).all()
    plain = LOGITS.clone().requires_grad_(True)
    nn.CrossEntropyLoss(reduction="sum")(plain, TARGET).backward()
    scale = torch.tensor([WEIGHT[y] for y in TARGET.tolist()]).unsqueeze(1) / 4
    assert torch.allclose(logits.grad, plain.grad * scale, atol=1e-7)


def test_from_counts_builds_either_papers_weights():
    inv = ClassWeightedCrossEntropy.from_counts(FER2013_COUNTS)
    assert isinstance(inv, nn.modules.loss._WeightedLoss) and inv.normalize == "batch"
    assert torch.allclose(inv.weight, inverse_frequency_weights(FER2013_COUNTS))
    root = ClassWeightedCrossEntropy.from_counts([100, 400], "root", gamma=2, normalize="weights",
                                                 label_smoothing=0.1)
    assert root.weight.tolist() == pytest.approx([math.sqrt(2.5), math.sqrt(0.625)])
    assert root.normalize == "weights" and root.label_smoothing == 0.1
    assert "weight" in dict(root.named_buffers())  # moves with .to(device) and is saved in state_dict
    with pytest.raises(ValueError, match="needs gamma"):
        ClassWeightedCrossEntropy.from_counts([1, 2], "root")
    with pytest.raises(ValueError, match="gamma applies to scheme='root'"):
        ClassWeightedCrossEntropy.from_counts([1, 2], gamma=2)
    with pytest.raises(ValueError, match="unknown class-weight scheme 'sqrt'"):
        ClassWeightedCrossEntropy.from_counts([1, 2], "sqrt")
    with pytest.raises(ValueError, match=r"class\(es\) \['b'\]"):
        ClassWeightedCrossEntropy.from_counts({"a": 1, "b": 0})


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="normalize must be one of"):
        ClassWeightedCrossEntropy(WEIGHT, normalize="keras")
    with pytest.raises(ValueError, match="reduction must be"):
        ClassWeightedCrossEntropy(WEIGHT, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        ClassWeightedCrossEntropy(WEIGHT, label_smoothing=1.5)
    with pytest.raises(ValueError, match="finite and >= 0"):
        ClassWeightedCrossEntropy([1.0, -1.0])
    with pytest.raises(ValueError, match="3 class weights but the logits have shape"):
        ClassWeightedCrossEntropy(WEIGHT)(torch.zeros(2, 7), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="class-index targets"):
        ClassWeightedCrossEntropy(WEIGHT)(LOGITS, torch.softmax(LOGITS, 1))


def test_double_logits_and_repr():
    loss = ClassWeightedCrossEntropy(WEIGHT)
    out = loss(LOGITS.double(), TARGET)
    assert out.dtype == torch.float64 and float(out) == pytest.approx(_by_hand("batch"), rel=1e-9)
    assert "normalize='batch'" in repr(loss) and "classes=3" in repr(loss)


def test_works_as_a_fer_train_loss():
    batch_loss = fer.train.logits_loss(ClassWeightedCrossEntropy(WEIGHT))
    out = batch_loss({"logits": LOGITS}, {"label": TARGET})
    assert float(out) == pytest.approx(_by_hand("batch"), rel=1e-6)
