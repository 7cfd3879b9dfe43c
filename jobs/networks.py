"""The networks a Model can train, built for the dataset's channels, size and class count.

DIGITS shipped three standard networks and let users write their own; kdigits keeps those and
adds torchvision's classification models:
- `lenet`, `alexnet`, `googlenet`: DIGITS' Caffe definitions (layer sizes, Caffe's ceil-mode
  pooling, LRN, the weight fillers and bias constants, GoogLeNet's two auxiliary classifiers
  weighted 0.3 in training). LeNet scales its input by 0.00390625 like DIGITS' LeNet; AlexNet
  and GoogLeNet take mean-subtracted pixels unscaled, as DIGITS fed them.
- any torchvision classification model by name (`resnet18`, `vgg16`...), untrained, with its
  first convolution adapted to the dataset's channels and its classifier to the class count;
  its input is scaled by 1/255.
- a custom declarative layer list (shapes inferred; a linear layer on a feature map flattens
  it first; the last linear's `outFeatures` defaults to the class count); input scaled by 1/255.
- custom Python source defining `build_network(channels, height, width, classes)`, only when
  the operator allows it (`allow_custom_python`, off by default): it runs arbitrary code.

Every network takes float [B, C, H, W] pixels in 0..255 units, mean-subtracted by the input
pipeline (jobs.transforms). Shape problems are found on the `meta` device, before any real
compute, and reported as `NetworkInputError` naming the spec field at fault.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from jobs.specs import CustomNetwork, Layer, LayerType, NetworkSpec

DIGITS_NETWORKS = ("lenet", "alexnet", "googlenet")
LENET_INPUT_SCALE = 0.00390625  # DIGITS' LeNet: MulConstant(0.00390625)
DEFAULT_INPUT_SCALE = 1.0 / 255.0  # torchvision and custom layer lists
AUX_LOSS_WEIGHT = 0.3  # GoogLeNet's auxiliary classifiers, as in DIGITS' prototxt
MAX_PROBE_SIZE = 4096


class NetworkInputError(ValueError):
    """The network cannot be built for, or cannot take, the dataset's images."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class NetworkDefaults:
    """What DIGITS' network definitions set besides the layers."""

    batch_size: int
    crop_size: int | None = None  # DIGITS' data layer crop (AlexNet 227, GoogLeNet 224)
    bias_lr_mult: float = 1.0  # Caffe `lr_mult` of the biases
    bias_decay_mult: float = 1.0  # Caffe `decay_mult` of the biases


_DIGITS_DEFAULTS = {
    "lenet": NetworkDefaults(batch_size=64, bias_lr_mult=2.0, bias_decay_mult=1.0),
    "alexnet": NetworkDefaults(batch_size=100, crop_size=227, bias_lr_mult=2.0, bias_decay_mult=0),
    "googlenet": NetworkDefaults(batch_size=24, crop_size=224, bias_lr_mult=2.0, bias_decay_mult=0),
}
TORCHVISION_DEFAULTS = NetworkDefaults(batch_size=32)
CUSTOM_DEFAULTS = NetworkDefaults(batch_size=64)


def network_defaults(network: NetworkSpec) -> NetworkDefaults:
    """Batch size, crop and bias multipliers of a resolved (standard or custom) network."""
    if network.standard is not None:
        return _DIGITS_DEFAULTS.get(network.standard, TORCHVISION_DEFAULTS)
    return CUSTOM_DEFAULTS


def default_batch_size(network: NetworkSpec) -> int:
    return network_defaults(network).batch_size


def standard_names() -> list[str]:
    """Every name `network.standard` accepts."""
    return sorted(set(DIGITS_NETWORKS) | set(_torchvision_names()))


def _torchvision_names() -> list[str]:
    import torchvision

    return [n for n in torchvision.models.list_models(module=torchvision.models)]


# --------------------------------------------------------------------------- building blocks


class ScaleInput(nn.Module):
    """Multiplies the input by a constant (Caffe's Power layer, Torch's MulConstant)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class Scaled(nn.Module):
    """A model whose input is scaled first (torchvision models, Python-defined networks)."""

    def __init__(self, body: nn.Module, factor: float) -> None:
        super().__init__()
        self.scale = ScaleInput(factor)
        self.body = body

    def forward(self, x: torch.Tensor) -> Any:
        return self.body(self.scale(x))


def _flat_features(features: nn.Module, channels: int, height: int, width: int) -> int:
    """Size of `features`' flattened output for one [channels, height, width] image (meta)."""
    probe = copy.deepcopy(features).to("meta")
    out = probe(torch.empty(1, channels, height, width, device="meta"))
    return int(math.prod(out.shape[1:]))


def _caffe_pool(kind: str, kernel: int, stride: int, padding: int = 0) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(kernel, stride, padding, ceil_mode=True)
    return nn.AvgPool2d(kernel, stride, padding, ceil_mode=True)


def _lrn() -> nn.Module:
    """Caffe's LRN as DIGITS' AlexNet and GoogLeNet set it: local_size 5, alpha 1e-4, beta 0.75."""
    return nn.LocalResponseNorm(5, 1e-4, 0.75)


def _caffe_xavier_(module: nn.Conv2d | nn.Linear, bias: float) -> None:
    """Caffe's `xavier` filler: U(-a, a) with a = sqrt(3 / fan_in); constant bias."""
    fan_in = module.weight[0].numel()
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(module.weight, -bound, bound)
    if module.bias is not None:
        nn.init.constant_(module.bias, bias)


def _caffe_gaussian_(module: nn.Conv2d | nn.Linear, std: float, bias: float) -> None:
    nn.init.normal_(module.weight, 0.0, std)
    if module.bias is not None:
        nn.init.constant_(module.bias, bias)


# --------------------------------------------------------------------------- DIGITS' networks


class LeNet(nn.Module):
    """DIGITS' LeNet: conv20-pool-conv50-pool-fc500-relu-fc(classes), xavier fillers."""

    def __init__(self, channels: int, height: int, width: int, classes: int) -> None:
        super().__init__()
        self.scale = ScaleInput(LENET_INPUT_SCALE)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 20, 5),
            _caffe_pool("max", 2, 2),
            nn.Conv2d(20, 50, 5),
            _caffe_pool("max", 2, 2),
        )
        flat = _flat_features(self.features, channels, height, width)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 500), nn.ReLU(inplace=True), nn.Linear(500, classes)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                _caffe_xavier_(module, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.scale(x)))


class AlexNet(nn.Module):
    """DIGITS' AlexNet (grouped convolutions, LRN, gaussian fillers, dropout 0.5)."""

    def __init__(self, channels: int, height: int, width: int, classes: int) -> None:
        super().__init__()
        conv1 = nn.Conv2d(channels, 96, 11, stride=4)
        conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        conv3 = nn.Conv2d(256, 384, 3, padding=1)
        conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.features = nn.Sequential(
            conv1, nn.ReLU(inplace=True), _lrn(), _caffe_pool("max", 3, 2),
            conv2, nn.ReLU(inplace=True), _lrn(), _caffe_pool("max", 3, 2),
            conv3, nn.ReLU(inplace=True),
            conv4, nn.ReLU(inplace=True),
            conv5, nn.ReLU(inplace=True), _caffe_pool("max", 3, 2),
        )  # fmt: skip
        flat = _flat_features(self.features, channels, height, width)
        fc6, fc7, fc8 = nn.Linear(flat, 4096), nn.Linear(4096, 4096), nn.Linear(4096, classes)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            fc6, nn.ReLU(inplace=True), nn.Dropout(0.5),
            fc7, nn.ReLU(inplace=True), nn.Dropout(0.5),
            fc8,
        )  # fmt: skip
        for layer, std, bias in (
            (conv1, 0.01, 0.0), (conv2, 0.01, 0.1), (conv3, 0.01, 0.0), (conv4, 0.01, 0.1),
            (conv5, 0.01, 0.1), (fc6, 0.005, 0.1), (fc7, 0.005, 0.1), (fc8, 0.01, 0.0),
        ):  # fmt: skip
            _caffe_gaussian_(layer, std, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """GoogLeNet's inception module: 1x1, 3x3, 5x5 and pool-projection branches."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.b1 = _conv_relu(cin, c1, 1)
        self.b3 = nn.Sequential(_conv_relu(cin, c3r, 1), _conv_relu(c3r, c3, 3, padding=1))
        self.b5 = nn.Sequential(_conv_relu(cin, c5r, 1), _conv_relu(c5r, c5, 5, padding=2))
        self.bp = nn.Sequential(_caffe_pool("max", 3, 1, 1), _conv_relu(cin, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class AuxClassifier(nn.Module):
    """GoogLeNet's auxiliary head: avgpool 5/3, conv 128, fc 1024, dropout 0.7, fc classes."""

    def __init__(self, cin: int, spatial: tuple[int, int], classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(_caffe_pool("avg", 5, 3), _conv_relu(cin, 128, 1))
        flat = _flat_features(self.features, cin, *spatial)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(0.7),
            nn.Linear(1024, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class GoogLeNet(nn.Module):
    """DIGITS' GoogLeNet (Inception v1 with LRN); in training it also returns two aux logits."""

    def __init__(self, channels: int, height: int, width: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv_relu(channels, 64, 7, 2, 3),
            _caffe_pool("max", 3, 2),
            _lrn(),
            _conv_relu(64, 64, 1),
            _conv_relu(64, 192, 3, padding=1),
            _lrn(),
            _caffe_pool("max", 3, 2),
            Inception(192, 64, 96, 128, 16, 32, 32),
            Inception(256, 128, 128, 192, 32, 96, 64),
            _caffe_pool("max", 3, 2),
            Inception(480, 192, 96, 208, 16, 48, 64),
        )
        self.mid = nn.Sequential(
            Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64),
            Inception(512, 112, 144, 288, 32, 64, 64),
        )
        self.top = nn.Sequential(
            Inception(528, 256, 160, 320, 32, 128, 128),
            _caffe_pool("max", 3, 2),
            Inception(832, 256, 160, 320, 32, 128, 128),
            Inception(832, 384, 192, 384, 48, 128, 128),
            _caffe_pool("avg", 7, 1),
            nn.Dropout(0.4),
            nn.Flatten(),
        )
        probe = torch.empty(1, channels, height, width, device="meta")
        stem_out = copy.deepcopy(self.stem).to("meta")(probe)
        mid_out = copy.deepcopy(self.mid).to("meta")(stem_out)
        top_out = copy.deepcopy(self.top).to("meta")(mid_out)
        self.aux1 = AuxClassifier(512, (stem_out.shape[2], stem_out.shape[3]), classes)
        self.aux2 = AuxClassifier(528, (mid_out.shape[2], mid_out.shape[3]), classes)
        self.classifier = nn.Linear(top_out.shape[1], classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                _caffe_xavier_(module, 0.2)
        for head in (self.classifier, self.aux1.classifier[-1], self.aux2.classifier[-1]):
            assert isinstance(head, nn.Linear)
            _caffe_xavier_(head, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        stem = self.stem(x)
        mid = self.mid(stem)
        logits = self.classifier(self.top(mid))
        if self.training:
            return logits, self.aux1(stem), self.aux2(mid)
        return logits


_DIGITS_BUILDERS: dict[str, Callable[[int, int, int, int], nn.Module]] = {
    "lenet": LeNet,
    "alexnet": AlexNet,
    "googlenet": GoogLeNet,
}


# --------------------------------------------------------------------------- torchvision


def _torchvision(name: str, channels: int, height: int, width: int, classes: int) -> nn.Module:
    import torchvision

    if name not in _torchvision_names():
        raise NetworkInputError(
            "network.standard",
            f"unknown network {name!r}; choose lenet, alexnet, googlenet or a torchvision "
            "classification model (resnet18, vgg16, ...)",
        )
    kwargs: dict[str, Any] = {"weights": None, "num_classes": classes}
    if name == "inception_v3":
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    elif name.startswith("vit_"):
        if height != width:
            raise NetworkInputError("image", f"{name} needs square images (got {height}x{width})")
        kwargs["image_size"] = height
    elif name == "maxvit_t":
        kwargs["input_size"] = (height, width)
    model = torchvision.models.get_model(name, **kwargs)
    if channels != 3:
        _adapt_first_conv(model, channels)
    return Scaled(model, DEFAULT_INPUT_SCALE)


def _adapt_first_conv(model: nn.Module, channels: int) -> None:
    """Replace the first 3-channel convolution by one taking `channels` inputs."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                replacement = nn.Conv2d(
                    channels,
                    child.out_channels,
                    child.kernel_size,  # type: ignore[arg-type]
                    child.stride,  # type: ignore[arg-type]
                    child.padding,  # type: ignore[arg-type]
                    child.dilation,  # type: ignore[arg-type]
                    child.groups,
                    child.bias is not None,
                    child.padding_mode,
                )
                setattr(parent, child_name, replacement)
                return
    raise NetworkInputError("network.standard", "found no 3-channel input convolution to adapt")


# --------------------------------------------------------------------------- custom


def _layer_field(index: int, name: str | None = None) -> str:
    field = f"network.custom.layers[{index}]"
    return f"{field}.{name}" if name else field


def _spatial_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def build_layers(
    layers: list[Layer], channels: int, height: int, width: int, classes: int
) -> nn.Sequential:
    """A custom layer list as modules, each input shape inferred from the one before."""
    shape: tuple[int, ...] = (channels, height, width)
    modules: list[nn.Module] = [ScaleInput(DEFAULT_INPUT_SCALE)]
    last_linear = max(
        (i for i, lay in enumerate(layers) if lay.type == LayerType.LINEAR), default=-1
    )
    for index, layer in enumerate(layers):
        kind = layer.type
        if kind in (LayerType.CONV, LayerType.MAXPOOL, LayerType.AVGPOOL):
            if len(shape) != 3:
                raise NetworkInputError(
                    _layer_field(index),
                    f"{kind.value} needs a feature map, got {shape[0]} features",
                )
            kernel = layer.kernel_size or 1
            is_conv = kind == LayerType.CONV
            stride = layer.stride or (1 if is_conv else kernel)
            padding = layer.padding or 0
            if not is_conv and padding * 2 > kernel:
                raise NetworkInputError(
                    _layer_field(index, "padding"), f"padding {padding} exceeds half the kernel"
                )
            out_h = _spatial_out(shape[1], kernel, stride, padding)
            out_w = _spatial_out(shape[2], kernel, stride, padding)
            if out_h < 1 or out_w < 1:
                raise NetworkInputError(
                    _layer_field(index, "kernelSize"),
                    f"kernel {kernel} (padding {padding}) does not fit the "
                    f"{shape[1]}x{shape[2]} input of this layer",
                )
            if is_conv:
                assert layer.out_channels is not None
                modules.append(nn.Conv2d(shape[0], layer.out_channels, kernel, stride, padding))
                shape = (layer.out_channels, out_h, out_w)
            else:
                pool = nn.MaxPool2d if kind == LayerType.MAXPOOL else nn.AvgPool2d
                modules.append(pool(kernel, stride, padding))
                shape = (shape[0], out_h, out_w)
        elif kind == LayerType.ADAPTIVE_AVGPOOL:
            if len(shape) != 3:
                raise NetworkInputError(_layer_field(index), "adaptive_avgpool needs a feature map")
            size = layer.output_size or 1
            modules.append(nn.AdaptiveAvgPool2d(size))
            shape = (shape[0], size, size)
        elif kind in (LayerType.RELU, LayerType.SIGMOID, LayerType.TANH):
            activation = {LayerType.RELU: nn.ReLU, LayerType.SIGMOID: nn.Sigmoid}.get(kind, nn.Tanh)
            modules.append(activation())
        elif kind == LayerType.BATCHNORM:
            modules.append(
                nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])
            )
        elif kind == LayerType.DROPOUT:
            modules.append(nn.Dropout(layer.p if layer.p is not None else 0.5))
        elif kind == LayerType.FLATTEN:
            modules.append(nn.Flatten())
            shape = (math.prod(shape),)
        elif kind == LayerType.LINEAR:
            if len(shape) == 3:
                modules.append(nn.Flatten())
                shape = (math.prod(shape),)
            out = layer.out_features
            if out is None:
                if index != last_linear:
                    raise NetworkInputError(
                        _layer_field(index, "outFeatures"),
                        "only the last linear layer may leave outFeatures empty (it gets the "
                        "class count)",
                    )
                out = classes
            modules.append(nn.Linear(shape[0], out))
            shape = (out,)
    if len(shape) == 3:
        modules.append(nn.Flatten())
        shape = (math.prod(shape),)
    if shape[0] != classes:
        raise NetworkInputError(
            "network.custom.layers",
            f"the network ends with {shape[0]} outputs but the dataset has {classes} classes "
            "(leave the last linear layer's outFeatures empty to get the class count)",
        )
    return nn.Sequential(*modules)


def _custom_python(
    source: str, channels: int, height: int, width: int, classes: int, allowed: bool
) -> nn.Module:
    if not allowed:
        raise NetworkInputError(
            "network.custom.python",
            "custom Python networks are disabled; the operator must set "
            "KDIGITS_ALLOW_CUSTOM_PYTHON to enable them",
        )
    namespace: dict[str, Any] = {"__name__": "kdigits_custom_network"}
    try:
        exec(compile(source, "<network.custom.python>", "exec"), namespace)  # noqa: S102
    except Exception as error:
        raise NetworkInputError("network.custom.python", f"source failed: {error!r}") from error
    builder = namespace.get("build_network")
    if not callable(builder):
        raise NetworkInputError(
            "network.custom.python", "must define build_network(channels, height, width, classes)"
        )
    model = builder(channels, height, width, classes)
    if not isinstance(model, nn.Module):
        raise NetworkInputError("network.custom.python", "build_network must return a torch Module")
    return model


# --------------------------------------------------------------------------- entry points


def build_network(
    network: NetworkSpec,
    channels: int,
    height: int,
    width: int,
    classes: int,
    allow_custom_python: bool = False,
) -> nn.Module:
    """The untrained network for [channels, height, width] inputs and `classes` outputs.

    `network` must be resolved: `standard` or `custom` (a `previous` or `pretrained` network is
    the architecture recorded in that snapshot's network.json; see jobs.snapshots).
    """
    if network.standard is not None:
        name = network.standard
        if name in _DIGITS_BUILDERS:
            return _DIGITS_BUILDERS[name](channels, height, width, classes)
        return _torchvision(name, channels, height, width, classes)
    custom: CustomNetwork | None = network.custom
    if custom is None:
        raise ValueError("build_network needs a standard or custom network (resolve the others)")
    if custom.layers is not None:
        return build_layers(custom.layers, channels, height, width, classes)
    assert custom.python is not None
    return _custom_python(custom.python, channels, height, width, classes, allow_custom_python)


def _fits(
    network: NetworkSpec, channels: int, height: int, width: int, classes: int, allowed: bool
) -> bool:
    try:
        with torch.device("meta"):
            model = build_network(network, channels, height, width, classes, allowed)
            model.eval()
            model(torch.empty(1, channels, height, width))
    except (RuntimeError, ValueError, AssertionError, IndexError):
        return False
    return True


def check_network(
    network: NetworkSpec,
    channels: int,
    height: int,
    width: int,
    classes: int,
    allow_custom_python: bool = False,
    size_field: str = "image.height/image.width",
) -> None:
    """Raise NetworkInputError unless the network takes [channels, height, width] inputs.

    Runs on the `meta` device: no memory, no compute. `size_field` names the spec field the
    input size comes from (the dataset's image size, or `transform.cropSize`).
    """
    try:
        with torch.device("meta"):
            model = build_network(network, channels, height, width, classes, allow_custom_python)
            model.eval()
            out = model(torch.empty(1, channels, height, width))
    except NetworkInputError:
        raise
    except (RuntimeError, ValueError, AssertionError, IndexError) as error:
        name = network.standard or "the custom network"
        minimum = _minimum_size(network, channels, classes, allow_custom_python)
        need = f"; it needs at least {minimum}x{minimum}" if minimum else ""
        raise NetworkInputError(
            size_field,
            f"{name} cannot take {channels}x{height}x{width} inputs{need} ({_short(error)})",
        ) from error
    if out.ndim != 2 or out.shape[1] != classes:
        raise NetworkInputError(
            "network", f"the network outputs shape {tuple(out.shape)}, expected [batch, {classes}]"
        )


def _minimum_size(network: NetworkSpec, channels: int, classes: int, allowed: bool) -> int | None:
    """Smallest square input the network takes (binary search on the meta device)."""
    low, high = 1, MAX_PROBE_SIZE
    if not _fits(network, channels, high, high, classes, allowed):
        return None
    while low < high:
        mid = (low + high) // 2
        if _fits(network, channels, mid, mid, classes, allowed):
            high = mid
        else:
            low = mid + 1
    return low


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def load_matching(model: nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load every weight whose name and shape match; return the names left as initialised.

    Fine-tuning onto a different class count leaves the classifier (the mismatched last
    layers) freshly initialised: DIGITS' "replace the last layer".
    """
    own = model.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(k for k in own if k not in usable)


def training_loss(
    outputs: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise, main logits): GoogLeNet's aux heads weigh 0.3 each, as in DIGITS."""
    criterion = nn.functional.cross_entropy
    if isinstance(outputs, tuple):
        logits = outputs[0]
        loss = criterion(logits, labels)
        for aux in outputs[1:]:
            loss = loss + AUX_LOSS_WEIGHT * criterion(aux, labels)
        return loss, logits
    return criterion(outputs, labels), outputs


def adopt_channels_last(
    model: nn.Module,
    run: Callable[[bool], torch.Tensor],
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> bool:
    """Switch a convolution network to channels-last memory layout when it computes the same.

    On the CPU, oneDNN vectorises convolutions and, above all, max pooling over channels in
    that layout, where PyTorch's default-layout max pooling is a scalar loop: LeNet trains
    about 1.6x and classifies about 2x faster. `run(channels_last)` computes a probe output
    with `model` (in the layout named); the network switches only when the two layouts agree
    within `rtol`/`atol`. One that fails or disagrees (custom code that `.view()`s a feature
    map, say) stays in the layout it was built in.
    """
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    try:
        expected = run(False)
        model.to(memory_format=torch.channels_last)
        got = run(True)
        if got.shape == expected.shape and torch.allclose(
            got.float(), expected.float(), rtol=rtol, atol=atol
        ):
            return True
    except Exception:  # noqa: S110 - any failure: keep the layout the network was built in
        pass
    model.to(memory_format=torch.contiguous_format)
    return False
