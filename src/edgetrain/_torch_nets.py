"""PyTorch definitions of the networks of the benchmarks and the text demo (torch only).

One file serves both sides of the benchmark: ``edgetrain.bench`` exports these modules to
the inference ONNX that edgetrain compiles, and the PyTorch peer of ``benchmarks/run.py``
loads this file by path (without importing the edgetrain package, whose imports would
count toward PyTorch's process memory) to train the same modules eagerly. So this module
imports nothing but torch (and ``transformers`` where a function needs it).

- ``mobilenet_v2`` is torchvision's MobileNetV2 (width 1.0: the same layers, channel
  rounding, parameter names and initialisation), written out because torchvision does not
  import here. Its classifier's dropout is left out: random masks would make the systems'
  losses differ from the first step (the benchmark compares them).
- ``resnet18`` is torchvision's ResNet-18 (BasicBlock [2, 2, 2, 2], same names and init).
- ``SentenceClassifier`` is a sentence encoder (all-MiniLM-L6-v2 in the text demo and W6)
  with mean pooling over the attention mask and a linear head.
- ``LoRALinear`` wraps a frozen ``nn.Linear`` as ``edgetrain.select.lora`` rewrites it:
  ``y = x·Wᵀ + b + s·(x·A)·B`` with A [in, r] and B [r, out] given by the caller.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: to a multiple of 8, never more than 10 % down."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation with ReLU6 (children 0 conv, 1 bn, 2 relu6)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        cin = _make_divisible(32 * width)
        last = _make_divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU6(cin, last, kernel=1))
        self.features = nn.Sequential(*features)
        # torchvision: Sequential(Dropout(0.2), Linear); no dropout here (see module docstring),
        # but the Linear keeps its name classifier.1.
        self.classifier = nn.Sequential(nn.Identity(), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                         nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, 64, 1)
        self.layer2 = self._layer(64, 128, 2)
        self.layer3 = self._layer(128, 256, 2)
        self.layer4 = self._layer(256, 512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mobilenet_v2(num_classes: int = 1000, seed: int = 0) -> MobileNetV2:
    torch.manual_seed(seed)
    return MobileNetV2(num_classes)


def resnet18(num_classes: int = 1000, seed: int = 0) -> ResNet18:
    torch.manual_seed(seed)
    return ResNet18(num_classes)


NETS = {"mobilenet_v2": mobilenet_v2, "resnet18": resnet18}


def _tensor(a: Any) -> torch.Tensor:
    """A fresh tensor holding a copy of ``a`` (a tensor or an array)."""
    return a.detach().clone() if isinstance(a, torch.Tensor) else torch.tensor(a)


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank side branch (``edgetrain.select.lora``)."""

    def __init__(self, base: nn.Linear, a: Any, b: Any, scale: float) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(_tensor(a))
        self.lora_B = nn.Parameter(_tensor(b))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A @ self.lora_B) * self.scale


class SentenceClassifier(nn.Module):
    """Mean of the token embeddings under the attention mask (the encoder's own pooling),
    then a linear layer."""

    def __init__(self, encoder: nn.Module, hidden: int, n: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, n)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.head(pooled)


def bert_classifier(model_dir: str, n_classes: int, seed: int = 0, pretrained: bool = True
                    ) -> SentenceClassifier:
    """A transformers ``BertModel`` from a local folder (offline) + mean pooling + Linear,
    in eval mode, the head seeded; ``pretrained=False`` builds it from the folder's config
    only (for a state dict to be loaded into)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    encoder = (BertModel.from_pretrained(model_dir, add_pooling_layer=False) if pretrained else
               BertModel(BertConfig.from_pretrained(model_dir), add_pooling_layer=False))
    torch.manual_seed(seed)
    return SentenceClassifier(encoder, int(encoder.config.hidden_size), n_classes).eval()


def lora_module_path(onnx_weight: str) -> str:
    """The Linear module whose weight an ONNX name (``….weight`` or ``….weight_t``) is."""
    return onnx_weight.removesuffix("_t").removesuffix(".weight")


def add_lora(net: nn.Module, adapters: list[dict[str, Any]], weights: dict[str, Any]) -> None:
    """Wrap the Linear layers that ``edgetrain.select.lora`` adapted (``adapters``: its
    ``lora_merge`` metadata, ONNX weight names) in LoRALinear with the A and B values of
    ``weights``; everything but the adapters is frozen."""
    for p in net.parameters():
        p.requires_grad_(False)
    for ad in adapters:
        path = lora_module_path(ad["weight"])
        parent_name, _, child = path.rpartition(".")
        parent = net.get_submodule(parent_name)
        wrapped = LoRALinear(getattr(parent, child), weights[ad["A"]], weights[ad["B"]],
                             float(ad["scale"]))
        setattr(parent, child, wrapped)


def copy_weights(net: nn.Module, weights: dict[str, Any]) -> int:
    """Copy the values of ONNX initializers into the module's parameters and buffers of the
    same name (``name.weight_t`` holds ``name.weight`` transposed); returns how many."""
    n = 0
    with torch.no_grad():
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            if name in weights:
                t.copy_(_tensor(weights[name]).reshape(t.shape))
            elif name.endswith(".weight") and f"{name}_t" in weights:
                t.copy_(_tensor(weights[f"{name}_t"]).T)
            else:
                continue
            n += 1
    return n
