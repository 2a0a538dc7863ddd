"""Architectures in sio.train.BACKBONES and the G-ODIN head: shapes, parameter counts, contract."""

from __future__ import annotations

import pytest
import torch
import torchvision

from sio.train import BACKBONES, HEADS, GodinClassifier, build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(name, channels=3, classes=10, head="linear", **options):
    torch.manual_seed(0)
    return build_classifier(
        name,
        in_channels=channels,
        num_classes=classes,
        mean=[0.5] * channels,
        std=[0.25] * channels,
        head=head,
        **options,
    )


def test_registries():
    assert {"small_cnn", "resnet18_32", "resnet18_224", "densenet100"} <= set(BACKBONES.names())
    assert HEADS.names() == ["godin", "linear"]


@pytest.mark.parametrize(
    ("name", "size", "dim"),
    [("small_cnn", 8, 128), ("resnet18_32", 16, 512), ("densenet100", 16, 342)],
)
def test_forward_on_a_tiny_batch(name, size, dim):
    model = build(name).eval()
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        features, logits = model.features(images), model(images)
    assert features.shape == (2, dim) and model.backbone.feature_dim == dim
    assert logits.shape == (2, 10)
    assert torch.allclose(logits, model.fc(features))


def densenet_bc_params(depth: int, growth: int, classes: int, channels: int = 3) -> int:
    """Closed-form parameter count of DenseNet-BC (Huang et al. 2017), derived by hand: per
    bottleneck on c input channels BN(c) + 1x1 conv c->4k + BN(4k) + 3x3 conv 4k->k."""
    per_block = (depth - 4) // 6
    planes, total = 2 * growth, channels * 2 * growth * 9  # 3x3 stem conv
    for block in range(3):
        for i in range(per_block):
            c = planes + i * growth
            total += 2 * c + c * 4 * growth + 2 * 4 * growth + 4 * growth * growth * 9
        planes += per_block * growth
        if block < 2:
            total += 2 * planes + planes * (planes // 2)  # transition BN + 1x1 conv
            planes //= 2
    return total + 2 * planes + planes * classes + classes  # final BN + fc


def test_densenet_bc_100_parameter_count():
    model = build("densenet100")
    expected = densenet_bc_params(100, 12, 10)
    assert expected == 769_162  # the paper's "0.8M" for DenseNet-BC (L = 100, k = 12)
    assert n_params(model) == expected
    assert model.backbone.feature_dim == 342


def test_densenet_depth_must_be_6n_plus_4():
    from sio.train.densenet import DenseNetBC

    with pytest.raises(ValueError, match="6n"):
        DenseNetBC(3, depth=50)


def test_resnet18_224_matches_torchvision():
    ours = build("resnet18_224", classes=1000)
    reference = torchvision.models.resnet18(num_classes=1000)
    assert n_params(ours) == n_params(reference) == 11_689_512
    stem = ours.backbone.stem
    assert stem[0].kernel_size == (7, 7) and stem[0].stride == (2, 2)
    assert isinstance(stem[3], torch.nn.MaxPool2d)
    ours.eval()
    with torch.no_grad():
        x = torch.rand(1, 3, 224, 224)
        last_map = ours.backbone.layers(ours.backbone.stem(x))
        assert last_map.shape == (1, 512, 7, 7)
        assert ours.features(x).shape == (1, 512)


def test_resnet18_32_keeps_the_cifar_stem():
    model = build("resnet18_32")
    assert model.backbone.stem[0].kernel_size == (3, 3)
    assert n_params(model) == 11_173_962  # the usual CIFAR ResNet-18 count for 10 classes


# --- the G-ODIN head ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def godin():
    model = build("small_cnn", channels=1, classes=4, head="godin", epsilon=0.01)
    assert isinstance(model, GodinClassifier)
    return model.eval()


def test_godin_fc_of_features_is_the_cosine_h(godin):
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        features, h = godin.features(images), godin(images)
        phi = godin.embed(images)
        cosine = torch.nn.functional.cosine_similarity(
            phi[:, None, :], godin.fc.direction[None], dim=2
        )
        deconf_h, g = godin.deconf(images)
    assert torch.allclose(features.norm(dim=1), torch.ones(5))
    assert torch.allclose(godin.fc.weight.norm(dim=1), torch.ones(4))
    assert torch.equal(godin.fc.bias, torch.zeros(4))
    # what the evaluator computes from the bank, h @ W.T + b, is h
    bank_logits = features @ godin.fc.weight.T + godin.fc.bias
    assert torch.allclose(bank_logits, h, atol=1e-6)
    assert torch.allclose(h, cosine, atol=1e-5) and torch.allclose(deconf_h, h)
    assert g.shape == (5, 1) and bool(((g > 0) & (g < 1)).all())


def test_godin_score_is_max_h_after_the_perturbation(godin):
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    x = (images.float() / 255).requires_grad_(True)
    godin(x).max(dim=1).values.sum().backward()
    expected = godin(x.detach() + 0.01 * torch.where(x.grad >= 0, 1.0, -1.0)).max(dim=1).values
    scores = godin.godin_score(images)  # epsilon 0.01 from the head's options
    assert torch.allclose(scores, expected.detach(), atol=1e-6)
    unperturbed = godin.godin_score(images, epsilon=0.0)
    assert torch.allclose(unperturbed, godin(images).max(dim=1).values.detach(), atol=1e-6)
    # the step is taken uphill: to first order the score rises
    assert float((scores - unperturbed).mean()) > 0
