"""Training methods as units: CutMix's lambda, OE's outlier term, VOS's gradients and draws,
LogitNorm, CE+'s schedule, PixMix's and RandAugment's transforms, and the method registry."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch
import torch.nn.functional as F

from sio.core.schedules import warmup_cosine
from sio.train import METHODS, MethodContext, build_classifier, build_method
from sio.train.config import LogitNormSettings, TrainConfig
from sio.train.methods.batch_transforms import (
    CutMixTransform,
    PixMixTransform,
    RandAugmentTransform,
    mixing_weights,
)
from sio.train.methods.oe import uniform_kl
from sio.train.methods.ops import AUGMIX_OPS, RANDAUGMENT_OPS, apply_op

CLASSES = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def constant_batch(n=16, size=8, channels=1):
    """Image i is the constant i + 1; labels i % CLASSES."""
    values = torch.arange(1, n + 1, dtype=torch.uint8)
    images = values[:, None, None, None].expand(n, channels, size, size).clone()
    return {
        "images": images,
        "labels": torch.arange(n) % CLASSES,
        "is_synthetic": torch.arange(n) % 4 == 0,
        "step": 0,
    }


def tiny_model(head="linear", **options):
    torch.manual_seed(0)
    return build_classifier(
        "small_cnn",
        in_channels=1,
        num_classes=CLASSES,
        mean=[0.5],
        std=[0.25],
        head=head,
        **options,
    )


def test_method_names_match_the_config_choices():
    hint = typing.get_type_hints(TrainConfig)["method"]
    assert sorted(typing.get_args(hint)) == METHODS.names()
    assert METHODS.names() == sorted(
        ["ce", "logitnorm", "godin", "vos", "cutmix", "ce_plus", "pixmix", "oe"]
    )


# --- CutMix --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_lambda_is_the_exact_kept_area(seed):
    batch = constant_batch(size=9)  # odd size: the clipped box is not (1 - lam) of the image
    out = CutMixTransform(beta=1.0)(batch, generator(seed))
    images, partner, lam = out["images"], out["mix_partner"], float(out["mix_lambda"])
    assert 0.0 <= lam <= 1.0 and sorted(partner.tolist()) == list(range(16))
    for i in range(16):
        own, pasted = i + 1, int(partner[i]) + 1
        values = images[i].flatten().tolist()
        assert set(values) <= {own, pasted}
        if pasted != own:
            assert values.count(pasted) / len(values) == pytest.approx(1 - lam, abs=1e-12)
    # labels, flags and composition are untouched
    assert torch.equal(out["labels"], batch["labels"])
    assert torch.equal(out["is_synthetic"], batch["is_synthetic"])


def test_cutmix_pastes_every_batch_and_draws_lambda_widely():
    lams = [
        float(CutMixTransform()(constant_batch(size=32), generator(s))["mix_lambda"])
        for s in range(40)
    ]
    assert len(set(lams)) > 20 and min(lams) < 0.4 and max(lams) > 0.8


def test_cutmix_loss_mixes_the_two_labels():
    config = TrainConfig(method="cutmix")
    method = build_method(config, MethodContext(CLASSES, 128, 0, 5))
    model = tiny_model()
    batch = CutMixTransform()(constant_batch(), generator(3))
    loss, logits = method.loss(model, batch)
    lam = float(batch["mix_lambda"])
    y, y_b = batch["labels"], batch["labels"][batch["mix_partner"]]
    expected = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y_b)
    assert torch.allclose(loss, expected)


# --- OE ------------------------------------------------------------------------------------


def test_oe_outlier_term_is_zero_for_uniform_logits():
    assert float(uniform_kl(torch.zeros(7, 5))) == pytest.approx(0.0, abs=1e-6)
    assert float(uniform_kl(torch.full((7, 5), 3.2))) == pytest.approx(0.0, abs=1e-6)
    peaked = torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0]])
    assert float(uniform_kl(peaked)) > 0.5


def test_oe_outlier_term_has_the_gradient_of_ce_to_uniform():
    logits = torch.randn(6, 5, generator=generator(1), requires_grad=True)
    (ours,) = torch.autograd.grad(uniform_kl(logits), logits)
    ce_uniform = -(F.log_softmax(logits, dim=1).mean(dim=1)).mean()  # Hendrycks et al.'s form
    (reference,) = torch.autograd.grad(ce_uniform, logits)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert float((ce_uniform - uniform_kl(logits)).detach()) == pytest.approx(math.log(5), abs=1e-5)


def test_oe_loss_is_ce_plus_half_the_outlier_term():
    config = dataclasses.replace(
        TrainConfig(), method="oe", oe=dataclasses.replace(TrainConfig().oe, outliers="x")
    )
    method = build_method(config, MethodContext(CLASSES, 128, 0, 5))
    assert method.sources() == {"outliers": 2 * config.batch_size}
    model = tiny_model().eval()
    batch = constant_batch(n=4)
    batch["outliers"] = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    loss, id_logits = method.loss(model, batch)
    logits = model(torch.cat([batch["images"], batch["outliers"]]))
    expected = F.cross_entropy(logits[:4], batch["labels"]) + 0.5 * uniform_kl(logits[4:])
    assert id_logits.shape == (4, CLASSES)
    assert torch.allclose(loss, expected, atol=1e-6)


# --- VOS -----------------------------------------------------------------------------------


def vos_setup(weight=0.1, queue=6, samples=200):
    config = dataclasses.replace(
        TrainConfig(),
        method="vos",
        vos=dataclasses.replace(
            TrainConfig().vos, queue_size=queue, samples=samples, weight=weight
        ),
    )
    model = tiny_model()
    torch.manual_seed(1)
    method = build_method(config, MethodContext(CLASSES, model.backbone.feature_dim, 0, 5))
    # fill every queue with real features of the model
    images = torch.randint(0, 256, (3 * CLASSES * queue, 1, 8, 8), generator=generator(2))
    labels = torch.arange(len(images)) % CLASSES
    with torch.no_grad():
        method.enqueue(model.features(images.to(torch.uint8)), labels)
    assert method.ready(0)
    return model, method


def backbone_grads(model, loss):
    params = [p for p in model.backbone.parameters()]
    return torch.autograd.grad(loss, params, allow_unused=True)


def test_vos_regulariser_reaches_the_backbone():
    model, method = vos_setup()
    batch = constant_batch(n=9)
    batch["images"] = torch.randint(0, 256, (9, 1, 8, 8), generator=generator(4)).to(torch.uint8)
    logits = model(batch["images"])
    regulariser = method.regulariser(model, logits, step=3)
    assert regulariser.requires_grad and method.energy(logits).requires_grad
    grads = backbone_grads(model, regulariser)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    # the full loss: CE + 0.1 R has other backbone gradients than CE alone
    model.train()
    method.train()
    with_reg, _ = method.loss(model, batch)
    _, plain = vos_setup(weight=0.0)
    without_reg, _ = plain.loss(model, batch)
    g1, g0 = backbone_grads(model, with_reg), backbone_grads(model, without_reg)
    diff = sum(float((a - b).abs().sum()) for a, b in zip(g1, g0, strict=True))
    assert diff > 1e-6
    # the learnable energy weights and the logistic head get gradients too
    (weight_grad,) = torch.autograd.grad(
        method.regulariser(model, model(batch["images"]), 3), [method.energy_weight]
    )
    assert float(weight_grad.abs().sum()) > 0


def test_vos_virtual_outliers_are_the_least_likely_draws():
    model, method = vos_setup(samples=400)
    virtual = method.virtual_outliers(step=7)
    dim = model.backbone.feature_dim
    assert virtual.shape == (CLASSES, dim)
    queue = method.queue
    means = queue.mean(dim=1)
    centred = (queue - means[:, None]).reshape(-1, dim).double()
    cov = centred.T @ centred / len(centred) + 1e-4 * torch.eye(dim, dtype=torch.float64)
    for k in range(CLASSES):
        gaussian = torch.distributions.MultivariateNormal(means[k].double(), cov)
        fresh = gaussian.sample((2000,))
        picked = gaussian.log_prob(virtual[k].double())
        # the least likely of 400 draws is below ~99.75 % of fresh draws
        assert float((gaussian.log_prob(fresh) < picked).double().mean()) < 0.02
    assert torch.equal(virtual, method.virtual_outliers(step=7))  # seeded by (seed, step)
    assert not torch.equal(virtual, method.virtual_outliers(step=8))


def test_vos_queues_are_fifo_per_class():
    config = dataclasses.replace(
        TrainConfig(), method="vos", vos=dataclasses.replace(TrainConfig().vos, queue_size=3)
    )
    method = build_method(config, MethodContext(2, 1, 0, 5))
    method.enqueue(torch.tensor([[1.0], [2.0], [10.0]]), torch.tensor([0, 0, 1]))
    assert method.filled.tolist() == [2, 1] and not method.ready(0)
    method.enqueue(torch.tensor([[3.0], [4.0], [11.0], [12.0]]), torch.tensor([0, 0, 1, 1]))
    assert method.queue[0].flatten().tolist() == [2.0, 3.0, 4.0]
    assert method.queue[1].flatten().tolist() == [10.0, 11.0, 12.0]
    assert method.ready(0)


# --- LogitNorm, CE+ ------------------------------------------------------------------------


def test_logitnorm_is_ce_on_normalised_logits():
    method = build_method(TrainConfig(method="logitnorm"), MethodContext(CLASSES, 128, 0, 5))
    model = tiny_model()
    batch = constant_batch(n=6)
    loss, logits = method.loss(model, batch)
    z = logits / (0.04 * (logits.norm(dim=1, keepdim=True) + 1e-7))
    assert torch.allclose(loss, F.cross_entropy(z, batch["labels"]))
    # the loss only sees the logits' direction
    z2 = 3 * logits / (0.04 * ((3 * logits).norm(dim=1, keepdim=True) + 1e-7))
    assert torch.allclose(F.cross_entropy(z2, batch["labels"]), loss, atol=1e-5)


def logitnorm_formula(logits, labels, temperature):
    """Wei et al.'s loss in float64: mean_i [logsumexp(u_i / tau) - u_i[y_i] / tau], with
    u_i = z_i / ||z_i|| (the implementation's 1e-7 in the norm is below the tolerance)."""
    z = logits.detach().double()
    scaled = z / z.norm(dim=1, keepdim=True) / temperature
    return (torch.logsumexp(scaled, 1) - scaled[torch.arange(len(labels)), labels]).mean().item()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 0.01])
def test_logitnorm_uses_the_configured_temperature(temperature):
    """At temperatures other than the default, the loss is the formula's at that temperature:
    a loss that ignored train.logitnorm.temperature (or hard-coded 0.04) fails here."""
    config = TrainConfig(method="logitnorm", logitnorm=LogitNormSettings(temperature=temperature))
    method = build_method(config, MethodContext(CLASSES, 128, 0, 5))
    batch = constant_batch(n=6)
    loss, logits = method.loss(tiny_model(), batch)
    expected = logitnorm_formula(logits, batch["labels"], temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the batch tells the temperatures apart: the default's loss is not this one
    assert logitnorm_formula(logits, batch["labels"], 0.04) != pytest.approx(expected, rel=1e-2)


def test_ce_plus_schedule_and_length():
    config = TrainConfig(method="ce_plus", epochs=10)
    method = build_method(config, MethodContext(CLASSES, 128, 0, steps_per_epoch=4))
    assert method.total_epochs() == 30
    factor = method.lr_factor()
    warm = 5 * 4
    assert factor(0) == pytest.approx(1 / warm)
    assert factor(warm - 1) == pytest.approx(1.0)
    assert factor(warm) == pytest.approx(1.0)
    assert factor(30 * 4) == pytest.approx(0.0, abs=1e-12)
    rising = [factor(s) for s in range(warm)]
    assert rising == sorted(rising)
    assert warmup_cosine(100, 0)(50) == pytest.approx(0.5)


def test_ce_plus_uses_label_smoothing():
    method = build_method(TrainConfig(method="ce_plus"), MethodContext(CLASSES, 128, 0, 5))
    model = tiny_model()
    batch = constant_batch(n=6)
    loss, logits = method.loss(model, batch)
    smooth = F.one_hot(batch["labels"], CLASSES) * 0.9 + 0.1 / CLASSES
    expected = -(smooth * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


# --- image operations, RandAugment, PixMix -------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(set(AUGMIX_OPS) | set(RANDAUGMENT_OPS)))
def test_every_operation_keeps_shape_and_dtype(name, channels):
    image = torch.randint(0, 256, (channels, 8, 8), generator=generator(5)).to(torch.uint8)
    value = {"posterize": 3, "solarize": 128, "rotate": 20.0}.get(name, 1.5)
    if name.startswith("translate"):
        value = 2
    if name.startswith("shear"):
        value = 0.2
    out = apply_op(image, name, value)
    assert out.shape == image.shape and out.dtype == torch.uint8
    if name in ("rotate", "translate_x", "solarize", "posterize"):
        assert not torch.equal(out, image)


def test_randaugment_is_seeded_and_changes_images():
    batch = constant_batch(n=12)
    batch["images"] = torch.randint(0, 256, (12, 3, 8, 8), generator=generator(6)).to(torch.uint8)
    transform = RandAugmentTransform(num_ops=2, magnitude=9)
    a, b = transform(batch, generator(1)), transform(batch, generator(1))
    c = transform(batch, generator(2))
    assert torch.equal(a["images"], b["images"]) and not torch.equal(a["images"], c["images"])
    changed = (a["images"] != batch["images"]).flatten(1).any(dim=1)
    assert 0 < int(changed.sum()) <= 12 and torch.equal(a["labels"], batch["labels"])


def test_pixmix_mixing_weights_follow_their_betas():
    g = generator(7)
    draws = [mixing_weights(g, 3.0) for _ in range(4000)]
    first = [(a, b) for a, b in draws if a <= 1.0]
    second = [(a, b) for a, b in draws if a > 1.0]
    assert len(first) == pytest.approx(2000, abs=150)
    # Beta(3, 1) has mean 3/4 and Beta(1, 3) mean 1/4
    assert sum(a for a, _ in first) / len(first) == pytest.approx(0.75, abs=0.02)
    assert sum(b for _, b in first) / len(first) == pytest.approx(0.25, abs=0.02)
    assert all(-1 <= b <= 0 for _, b in second)
    assert sum(a for a, _ in second) / len(second) == pytest.approx(1.25, abs=0.02)


def test_pixmix_transform_gives_floats_in_the_unit_range():
    batch = constant_batch(n=16)
    batch["mixing"] = torch.randint(0, 256, (16, 1, 8, 8), generator=generator(8)).to(torch.uint8)
    out = PixMixTransform(k=4, beta=3.0, severity=3)(batch, generator(9))
    images = out["images"]
    assert "mixing" not in out and images.dtype == torch.float32
    assert bool(torch.isfinite(images).all()) and images.min() >= 0 and images.max() <= 1
    original = batch["images"].float() / 255
    assert int((images != original).flatten(1).any(dim=1).sum()) >= 8  # most images are mixed
    assert torch.equal(out["is_synthetic"], batch["is_synthetic"])
