"""Networks: DIGITS' definitions, torchvision by name, custom layer lists, shape errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jobs.networks import (
    LENET_INPUT_SCALE,
    LeNet,
    NetworkInputError,
    build_layers,
    build_network,
    check_network,
    default_batch_size,
    load_matching,
    network_defaults,
    training_loss,
)
from jobs.specs import Layer, NetworkSpec


def _standard(name: str) -> NetworkSpec:
    return NetworkSpec(standard=name)


def _custom(*layers: dict[str, object], python: str | None = None) -> NetworkSpec:
    if python is not None:
        return NetworkSpec.model_validate({"custom": {"python": python}})
    return NetworkSpec.model_validate({"custom": {"layers": list(layers)}})


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet_is_digits_lenet() -> None:
    model = build_network(_standard("lenet"), 1, 28, 28, 10)
    assert isinstance(model, LeNet)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(20, (5, 5)), (50, (5, 5))]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(800, 500), (500, 10)]
    # Caffe LeNet parameter count: 520 + 25050 + 400500 + 5010
    assert _params(model) == 431080
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert LENET_INPUT_SCALE == 0.00390625
    # The input really is scaled: 256 * x gives what x would without the scale layer.
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(model(x * 256), model.classifier(model.features(x)), atol=1e-5)
    # Caffe xavier: uniform within sqrt(3 / fan_in), biases zero.
    bound = (3 / 25) ** 0.5
    assert convs[0].weight.abs().max() <= bound and convs[0].weight.abs().max() > bound * 0.9
    assert convs[0].bias is not None and torch.count_nonzero(convs[0].bias) == 0


def test_lenet_adapts_to_channels_size_and_classes() -> None:
    model = build_network(_standard("lenet"), 3, 32, 40, 7)
    assert model(torch.zeros(2, 3, 32, 40)).shape == (2, 7)


def test_alexnet_as_digits_shipped_it() -> None:
    with torch.device("meta"):
        model = build_network(_standard("alexnet"), 3, 227, 227, 5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
    fc6 = [m for m in model.modules() if isinstance(m, nn.Linear)][0]
    assert fc6.in_features == 256 * 6 * 6 and fc6.out_features == 4096
    with torch.device("meta"):
        assert build_network(_standard("alexnet"), 3, 227, 227, 5)(
            torch.empty(1, 3, 227, 227)
        ).shape == (1, 5)


def test_googlenet_has_digits_auxiliary_heads() -> None:
    with torch.device("meta"):
        model = build_network(_standard("googlenet"), 3, 224, 224, 4)
        model.train()
        outputs = model(torch.empty(2, 3, 224, 224))
        assert isinstance(outputs, tuple) and [o.shape for o in outputs] == [(2, 4)] * 3
        model.eval()
        assert model(torch.empty(2, 3, 224, 224)).shape == (2, 4)
    logits = (torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4))
    loss, main = training_loss(logits, torch.tensor([0, 1]))
    # 3 heads of uniform logits: ln 4 * (1 + 0.3 + 0.3)
    assert loss.item() == pytest.approx(1.6 * torch.log(torch.tensor(4.0)).item())
    assert main is logits[0]


def test_digits_defaults() -> None:
    assert default_batch_size(_standard("lenet")) == 64
    assert default_batch_size(_standard("alexnet")) == 100
    assert default_batch_size(_standard("googlenet")) == 24
    assert network_defaults(_standard("alexnet")).crop_size == 227
    assert network_defaults(_standard("googlenet")).crop_size == 224
    assert network_defaults(_standard("lenet")).bias_lr_mult == 2.0


def test_torchvision_by_name_with_channels_and_classes_adapted() -> None:
    model = build_network(_standard("resnet18"), 1, 64, 64, 12)
    model.eval()
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 12)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    with torch.device("meta"):
        vgg = build_network(_standard("vgg16"), 3, 64, 64, 3)
        vgg.eval()
        assert vgg(torch.empty(1, 3, 64, 64)).shape == (1, 3)


def test_unknown_standard_network_names_the_field() -> None:
    with pytest.raises(NetworkInputError) as caught:
        check_network(_standard("lenet5000"), 1, 28, 28, 10)
    assert caught.value.field == "network.standard"
    assert "lenet5000" in str(caught.value)


def test_custom_layer_list_infers_shapes() -> None:
    spec = _custom(
        {"type": "conv", "outChannels": 8, "kernelSize": 3, "padding": 1},
        {"type": "batchnorm"},
        {"type": "relu"},
        {"type": "maxpool", "kernelSize": 2},
        {"type": "conv", "outChannels": 16, "kernelSize": 3},
        {"type": "relu"},
        {"type": "dropout", "p": 0.25},
        {"type": "linear", "outFeatures": 32},
        {"type": "batchnorm"},
        {"type": "tanh"},
        {"type": "linear"},
    )
    model = build_network(spec, 3, 20, 20, 6)
    assert isinstance(model, nn.Sequential)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [c.in_channels for c in convs] == [3, 8]
    # 20 -conv p1-> 20 -pool-> 10 -conv3-> 8: 16 * 8 * 8 features, auto-flattened
    assert linears[0].in_features == 16 * 8 * 8
    assert linears[-1].out_features == 6  # last linear: the class count
    assert isinstance(
        [m for m in model if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)][1], nn.BatchNorm1d
    )
    model.eval()
    assert model(torch.zeros(4, 3, 20, 20)).shape == (4, 6)


def test_custom_layers_ending_in_a_feature_map_are_flattened() -> None:
    layers = [
        Layer.model_validate({"type": "conv", "outChannels": 5, "kernelSize": 3}),
        Layer.model_validate({"type": "adaptive_avgpool", "outputSize": 1}),
    ]
    model = build_layers(layers, 1, 9, 9, 5)
    assert model(torch.zeros(2, 1, 9, 9)).shape == (2, 5)


@pytest.mark.parametrize(
    ("layers", "field", "words"),
    [
        (
            [{"type": "conv", "outChannels": 4, "kernelSize": 9}, {"type": "linear"}],
            "network.custom.layers[0].kernelSize",
            "does not fit the 8x8 input",
        ),
        (
            [
                {"type": "linear", "outFeatures": 16},
                {"type": "conv", "outChannels": 2, "kernelSize": 1},
            ],
            "network.custom.layers[1]",
            "needs a feature map",
        ),
        (
            [{"type": "linear"}, {"type": "relu"}, {"type": "linear", "outFeatures": 3}],
            "network.custom.layers[0].outFeatures",
            "only the last linear",
        ),
        (
            [{"type": "flatten"}, {"type": "linear", "outFeatures": 3}],
            "network.custom.layers",
            "ends with 3 outputs but the dataset has 10 classes",
        ),
    ],
)
def test_custom_layer_errors_name_the_field(
    layers: list[dict[str, object]], field: str, words: str
) -> None:
    with pytest.raises(NetworkInputError) as caught:
        check_network(_custom(*layers), 1, 8, 8, 10)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_image_too_small_for_the_network_names_the_field_and_minimum() -> None:
    with pytest.raises(NetworkInputError) as caught:
        check_network(_standard("lenet"), 1, 8, 8, 10)
    assert caught.value.field == "image.height/image.width"
    assert "needs at least 13x13" in str(caught.value)
    with pytest.raises(NetworkInputError) as caught:
        check_network(_standard("googlenet"), 3, 100, 100, 10, size_field="transform.cropSize")
    assert caught.value.field == "transform.cropSize"
    check_network(_standard("lenet"), 1, 13, 13, 10)  # the minimum fits


def test_custom_python_is_off_by_default() -> None:
    source = (
        "import torch.nn as nn\n"
        "def build_network(channels, height, width, classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, classes))\n"
    )
    with pytest.raises(NetworkInputError) as caught:
        build_network(_custom(python=source), 1, 4, 4, 3)
    assert caught.value.field == "network.custom.python"
    assert "KDIGITS_ALLOW_CUSTOM_PYTHON" in str(caught.value)
    model = build_network(_custom(python=source), 1, 4, 4, 3, allow_custom_python=True)
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(NetworkInputError, match="must define build_network"):
        build_network(_custom(python="x = 1\n"), 1, 4, 4, 3, allow_custom_python=True)


def test_load_matching_replaces_the_last_layer_on_a_new_class_count() -> None:
    trained = build_network(_standard("lenet"), 1, 28, 28, 10)
    fresh = build_network(_standard("lenet"), 1, 28, 28, 4)
    left = load_matching(fresh, trained.state_dict())
    assert left == ["classifier.3.bias", "classifier.3.weight"]
    weight = "features.0.weight"
    assert torch.equal(fresh.state_dict()[weight], trained.state_dict()[weight])
