"""A model zoo: timm and transformers architectures (random init, tiny configs), each exported
with ``et.from_torch``, compiled, and one edgetrain step compared with ``torch.autograd``.

**Precision.** Everything runs in float64: the module is converted with ``.double()`` before
export, edgetrain runs the float64 model on its ``reference`` backend (onnxruntime has no
float64 Conv), and torch computes the same loss in float64. Both sides then agree to ~1e-12,
so any real rule bug stands out by many orders of magnitude.

**The step.** ``from_torch(module, example, loss=…, optimizer=SGD(lr=1.0), batch_norm=…)``;
the loss is ``cross_entropy`` on a classification head (logits ``[B, C]``) and ``mse``
otherwise (hidden states; a language model's ``[B, S, V]`` logits, so every position feeds the
loss), against labels drawn with a fixed seed. One ``train`` step gives
``g = w₀ − w₁`` (plain SGD with lr = 1 writes ``w₁ = w₀ − g`` in one rounding).

**One function on both sides.** Random init puts activations exactly on kinks (a bias-free
depthwise conv over zero padding gives exact zeros, a fresh batch norm keeps them, ReLU6 sees
exactly 0, where torch's ``hardtanh`` and ONNX's Clip pick different valid subgradients), so
every tensor initialized to one constant is spread by ±10% (:func:`off_kinks`). ONNX stores
float attributes as float32, so every ``eps`` is rounded to float32 before export
(:func:`float32_constants`) and torch's hardswish/hardsigmoid use the float32 slope of ONNX's
HardSwish/HardSigmoid while torch computes (:func:`onnx_hard_activations`): a 3e-8 difference
in the function, amplified by batch statistics over two images, would otherwise swamp the
comparison.

**Torch's side.** The same module, in eval mode (``batch_norm="frozen"``: running statistics)
or train mode (``batch_norm="train"``: batch statistics; every dropout probability is set to 0
beforehand so train mode is deterministic), the same loss, ``backward()``.

**Matching parameters.** An ONNX initializer is matched to the torch parameter of the same
name, else to the one with the same values (the exporter stores a Linear weight that feeds a
MatMul transposed, as ``onnx::MatMul_…``): equal after a reshape, or equal to its transpose.
When several initializers match one parameter (tied weights, e.g. GPT-2's embedding and LM
head), their gradients are summed, as torch's are. A parameter torch trains that the ONNX file
does not contain (folded into a constant by the exporter) is listed as ``info["folded"]``; one
edgetrain was given but left frozen while torch's gradient is non-zero is ``wrong``.

**Tolerance.** Per parameter, ``max|g_et − g_torch| ≤ rtol · max(max|g_torch|, 1e-4 · G)``
where ``G`` is the largest gradient of the model (a gradient that is zero in exact arithmetic,
an attention key's bias, is rounding noise on both sides), and the step's loss must match
torch's to ``1e-9`` relative. ``rtol`` is 1e-6 (float64 round-off between two correct
implementations is ~1e-12; a wrong rule is off by O(0.1–1)), 1e-4 (loss 1e-6) for a graph
that computes part of itself in float32 (a Cast to float32 in the export: T5's RMSNorm
variance, rotary tables, eager softmax), and at least 100× the rounding noise the problem
itself amplifies (:func:`_rounding_noise`: batch statistics over two 1×1 feature maps).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

import edgetrain as et

from ._common import (
    CaseTimeout,
    Result,
    crash_detail,
    is_clear_error,
    one_line,
    time_limit,
)

SUITE = "zoo"
BATCH = 2
SEQ = 8
VOCAB = 100
CLASSES = 10
MODEL_SECONDS = 900.0
RTOL, LOSS_RTOL = 1e-6, 1e-9
#: For a model that computes part of its graph in float32 even when converted to float64
#: (T5's RMSNorm variance, Llama's rotary tables: a Cast to float32 in the exported graph),
#: where NumPy's and torch's float32 kernels differ in the last bit.
RTOL_MIXED, LOSS_RTOL_MIXED = 1e-4, 1e-6
#: A parameter's error is relative to its largest gradient, or to this fraction of the model's
#: largest gradient when its own is smaller: a gradient that is zero in exact arithmetic (an
#: attention key's bias) is float64 noise on both sides.
FLOOR = 1e-4
#: The conditioning probe (:func:`_rounding_noise`): its relative step, and how many times the
#: rounding noise it measures the tolerance allows.
NOISE_STEP, NOISE_SAFETY = 1e-12, 100.0

Built = tuple[Any, tuple[Any, ...], str]  # module (float32), example inputs, loss name


@dataclass(frozen=True)
class ZooModel:
    """One architecture: how to build it, and which batch-norm modes to compile it in."""

    name: str
    source: str                 # "timm", "transformers" or "hand-written"
    family: str                 # the architecture named in the coverage goal
    build: Callable[[], Built]
    batch_norm: tuple[str, ...] = ("frozen",)
    config: str = ""            # what makes it tiny


# -- builders --------------------------------------------------------------------------------

def _no_dropout(module: Any) -> Any:
    """Every dropout / drop-path probability to 0: train mode becomes deterministic."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
        for attr in ("drop_prob", "drop_rate", "p_drop"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)
    return module


def off_kinks(module: Any) -> Any:
    """Spread every parameter and buffer that is initialized to one constant (zero biases,
    unit norm scales, fresh running statistics) by ±10%.

    With them, activations land exactly on kinks: a bias-free depthwise conv over zero
    padding gives exact zeros, a fresh batch norm keeps them 0, and ReLU6 sees exactly 0,
    where torch's ``hardtanh`` passes no gradient and ONNX's Clip (torch's ``clamp``
    convention, which edgetrain follows) does. Both are valid subgradients; trained weights
    do not sit there, so the zoo moves off them (seeded) rather than compare conventions.
    """
    import torch

    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if not t.is_floating_point() or t.numel() < 2 or not bool((t == t.flatten()[0]).all()):
                continue
            spread = (torch.rand(t.shape, generator=gen, dtype=t.dtype) - 0.5) * 0.2
            t.add_(spread * max(1.0, abs(float(t.flatten()[0]))))
    return module


def float32_constants(module: Any) -> Any:
    """Every ``eps`` of the module rounded to float32: ONNX stores the epsilon of
    BatchNormalization and LayerNormalization as a float32 attribute, so this is the value the
    exported model computes with, on both sides."""
    for m in module.modules():
        if isinstance(getattr(m, "eps", None), float):
            m.eps = float(np.float32(m.eps))
    return module


@contextlib.contextmanager
def onnx_hard_activations() -> Iterator[None]:
    """torch's hardswish / hardsigmoid with the slope ONNX's HardSwish and HardSigmoid use,
    float32(1/6) (the ops' alpha is a float32 attribute), while torch computes the reference
    gradient: 1/6 and float32(1/6) differ by 3e-8, which batch statistics over a tiny batch
    amplify past any honest tolerance."""
    import torch
    import torch.nn.functional as F

    slope = float(np.float32(1.0 / 6.0))
    saved = F.hardswish, F.hardsigmoid

    def hardswish(x: Any, inplace: bool = False) -> Any:
        return x * torch.clamp(x * slope + 0.5, 0.0, 1.0)

    def hardsigmoid(x: Any, inplace: bool = False) -> Any:
        return torch.clamp(x * slope + 0.5, 0.0, 1.0)

    F.hardswish, F.hardsigmoid = hardswish, hardsigmoid
    try:
        yield
    finally:
        F.hardswish, F.hardsigmoid = saved


def _image(size: int, channels: int = 3) -> Any:
    import torch

    return torch.randn(BATCH, channels, size, size, generator=torch.Generator().manual_seed(1))


def _timm(name: str, size: int = 32, **kw: Any) -> Callable[[], Built]:
    def build() -> Built:
        from ._timm import import_timm

        timm = import_timm()
        m = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kw)
        return _no_dropout(m), (_image(size),), "cross_entropy"

    return build


def _hf_config(cls_name: str, **kw: Any) -> Any:
    """A transformers config with every dropout-like probability at 0 and eager attention."""
    import transformers

    cfg = getattr(transformers, cls_name)(**kw)
    for key, value in cfg.to_dict().items():
        if isinstance(value, float) and ("drop" in key or key.endswith("_prob")):
            setattr(cfg, key, 0.0)
    cfg._attn_implementation = "eager"
    return cfg


def _ids() -> Any:
    """Token ids from 3 up: no padding, BOS or EOS id (torch's ``Embedding(padding_idx=…)``
    skips the padding row's gradient by design, a rule the exported Gather cannot carry)."""
    import torch

    return torch.randint(3, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(2))


class _Head:
    """Wrap a transformers model into ``forward(x) -> tensor`` (what the exporter needs)."""

    @staticmethod
    def make(model: Any, output: str, ids: bool = True) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: Any) -> Any:
                if ids:  # an explicit mask keeps transformers off its packed-sequence path
                    out = self.model(input_ids=x, attention_mask=torch.ones_like(x),
                                     use_cache=False) if _takes_cache(self.model) else \
                        self.model(input_ids=x, attention_mask=torch.ones_like(x))
                else:
                    out = self.model(x)
                return getattr(out, output)

        return _no_dropout(Wrapped())


def _takes_cache(model: Any) -> bool:
    import inspect

    return "use_cache" in inspect.signature(model.forward).parameters


def _hf_text(model_cls: str, cfg_cls: str, output: str = "logits", loss: str = "cross_entropy",
             **cfg: Any) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        config = _hf_config(cfg_cls, **cfg)
        model = getattr(transformers, model_cls)(config)
        return _Head.make(model, output), (_ids(),), loss

    return build


def _hf_vision(model_cls: str, cfg_cls: str, size: int = 32, **cfg: Any) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        config = _hf_config(cfg_cls, num_labels=CLASSES, **cfg)
        model = getattr(transformers, model_cls)(config)
        return _Head.make(model, "logits", ids=False), (_image(size),), "cross_entropy"

    return build


def _hf_audio(model_cls: str, cfg_cls: str, shape: tuple[int, ...], output: str, loss: str,
              encoder: bool = False, **cfg: Any) -> Callable[[], Built]:
    def build() -> Built:
        import torch
        import transformers

        config = _hf_config(cfg_cls, **cfg)
        model = getattr(transformers, model_cls)(config)
        if encoder:
            model = model.get_encoder()
        x = torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(3))
        return _Head.make(model, output, ids=False), (x,), loss

    return build


def _shuffle_net() -> Built:
    """A hand-written ShuffleNet-v2 unit: split, pointwise/depthwise convs, channel shuffle."""
    import torch
    from torch import nn

    class Unit(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            h = c // 2
            self.branch = nn.Sequential(
                nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
                nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h),
                nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU())

        def forward(self, x: Any) -> Any:
            a, b = x.chunk(2, dim=1)
            y = torch.cat([a, self.branch(b)], dim=1)
            n, c, hh, ww = y.shape
            return y.reshape(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(16), nn.ReLU())
            self.units = nn.Sequential(Unit(16), Unit(16))
            self.head = nn.Linear(16, CLASSES)

        def forward(self, x: Any) -> Any:
            return self.head(self.units(self.stem(x)).mean(dim=(2, 3)))

    return Net(), (_image(32),), "cross_entropy"


_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             vocab_size=VOCAB, max_position_embeddings=64)
_DECODER = dict(_TEXT, num_key_value_heads=1)
_TINY = "hidden 32, 2 layers, 2 heads, vocab 100, seq 8"
# A language model's logits [B, S, V] under mse: every position feeds the loss (edgetrain's
# cross-entropy takes [B, C], and a flattened [B·S, V] output would not share x's batch size).
_LM = _TINY + ", mse on the LM logits"
_LM_GQA = _TINY + ", 1 KV head, mse on the LM logits"
BN = ("frozen", "train")

MODELS: list[ZooModel] = [
    # -- timm CNNs (batch norm: frozen and in training mode) --------------------------------
    ZooModel("resnet18", "timm", "ResNet", _timm("resnet18"), BN, "32×32"),
    ZooModel("resnet50d", "timm", "ResNet", _timm("resnet50d"), BN, "32×32"),
    ZooModel("resnet10t", "timm", "ResNet", _timm("resnet10t"), BN, "32×32"),
    ZooModel("mobilenetv2_050", "timm", "MobileNetV2", _timm("mobilenetv2_050"), BN, "32×32"),
    ZooModel("mobilenetv3_small_050", "timm", "MobileNetV3", _timm("mobilenetv3_small_050"),
             BN, "32×32"),
    ZooModel("mobilenetv3_large_075", "timm", "MobileNetV3", _timm("mobilenetv3_large_075"),
             BN, "32×32"),
    ZooModel("lcnet_050", "timm", "MobileNetV3", _timm("lcnet_050"), BN, "32×32"),
    ZooModel("efficientnet_b0", "timm", "EfficientNet", _timm("efficientnet_b0"), BN,
             "32×32"),
    ZooModel("efficientnet_lite0", "timm", "EfficientNet", _timm("efficientnet_lite0"), BN,
             "32×32"),
    ZooModel("tinynet_e", "timm", "EfficientNet", _timm("tinynet_e"), BN, "32×32"),
    ZooModel("mnasnet_small", "timm", "MnasNet", _timm("mnasnet_small"), BN, "32×32"),
    ZooModel("regnetx_002", "timm", "RegNet", _timm("regnetx_002"), BN, "32×32"),
    ZooModel("regnety_002", "timm", "RegNet", _timm("regnety_002"), BN, "32×32"),
    ZooModel("ghostnet_050", "timm", "GhostNet", _timm("ghostnet_050"), BN, "32×32"),
    ZooModel("densenet121", "timm", "DenseNet", _timm("densenet121"), BN, "32×32"),
    ZooModel("repvit_m0_9", "timm", "RepViT", _timm("repvit_m0_9"), BN, "32×32"),
    ZooModel("fastvit_t8", "timm", "FastViT", _timm("fastvit_t8", 64), BN, "64×64"),
    ZooModel("shufflenet_unit", "hand-written", "ShuffleNet (channel shuffle)", _shuffle_net,
             BN, "2 ShuffleNet-v2 units, 32×32"),
    # -- timm ConvNeXt / transformers / hybrids --------------------------------------------
    ZooModel("convnext_atto", "timm", "ConvNeXt", _timm("convnext_atto"), config="32×32"),
    ZooModel("convnextv2_atto", "timm", "ConvNeXt", _timm("convnextv2_atto"), config="32×32"),
    ZooModel("vit_tiny_patch16_224", "timm", "ViT", _timm(
        "vit_tiny_patch16_224", img_size=32, patch_size=8), config="32×32, patch 8"),
    ZooModel("deit_tiny_patch16_224", "timm", "DeiT", _timm(
        "deit_tiny_patch16_224", img_size=32, patch_size=8), config="32×32, patch 8"),
    ZooModel("mobilevit_xxs", "timm", "MobileViT", _timm("mobilevit_xxs", 64), BN, "64×64"),
    ZooModel("levit_128s", "timm", "LeViT", _timm("levit_128s", 64, img_size=64), BN,
             "64×64"),
    ZooModel("swin_tiny_patch4_window7_224", "timm", "Swin", _timm(
        "swin_tiny_patch4_window7_224", 32, img_size=32, window_size=2, embed_dim=32,
        depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)),
        config="32×32, window 2, dim 32, depths 1-1-2-1"),
    ZooModel("edgenext_xx_small", "timm", "EdgeNeXt", _timm("edgenext_xx_small", 64),
             config="64×64"),
    ZooModel("xcit_nano_12_p8_224", "timm", "XCiT", _timm(
        "xcit_nano_12_p8_224", img_size=32), BN, "32×32"),
    ZooModel("efficientvit_m0", "timm", "EfficientViT", _timm(
        "efficientvit_m0", 64, img_size=64), BN, "64×64"),
    ZooModel("pit_ti_224", "timm", "PiT", _timm("pit_ti_224", 64, img_size=64), config="64×64"),
    ZooModel("mobileone_s0", "timm", "MobileOne", _timm("mobileone_s0"), BN, "32×32"),
    # -- transformers: text ----------------------------------------------------------------
    ZooModel("bert", "transformers", "BERT", _hf_text(
        "BertForSequenceClassification", "BertConfig", num_labels=CLASSES, **_TEXT),
        config=_TINY),
    ZooModel("distilbert", "transformers", "DistilBERT", _hf_text(
        "DistilBertForSequenceClassification", "DistilBertConfig", num_labels=CLASSES,
        dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=VOCAB,
        max_position_embeddings=64), config=_TINY),
    ZooModel("roberta", "transformers", "RoBERTa", _hf_text(
        "RobertaForSequenceClassification", "RobertaConfig", num_labels=CLASSES, **_TEXT),
        config=_TINY),
    ZooModel("albert", "transformers", "ALBERT", _hf_text(
        "AlbertForSequenceClassification", "AlbertConfig", num_labels=CLASSES,
        embedding_size=16, **_TEXT), config=_TINY),
    ZooModel("deberta-v2", "transformers", "DeBERTa-v2", _hf_text(
        "DebertaV2ForSequenceClassification", "DebertaV2Config", num_labels=CLASSES,
        **_TEXT), config=_TINY),
    ZooModel("electra", "transformers", "ELECTRA", _hf_text(
        "ElectraForSequenceClassification", "ElectraConfig", num_labels=CLASSES,
        embedding_size=16, **_TEXT), config=_TINY),
    ZooModel("mpnet", "transformers", "MPNet", _hf_text(
        "MPNetForSequenceClassification", "MPNetConfig", num_labels=CLASSES, **_TEXT),
        config=_TINY),
    ZooModel("t5-encoder", "transformers", "T5 encoder", _hf_text(
        "T5EncoderModel", "T5Config", "last_hidden_state", loss="mse", d_model=32, d_kv=16,
        d_ff=64, num_layers=2, num_heads=2, vocab_size=VOCAB), config=_TINY),
    ZooModel("gpt2", "transformers", "GPT-2", _hf_text(
        "GPT2LMHeadModel", "GPT2Config", loss="mse", n_embd=32, n_layer=2, n_head=2,
        vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0), config=_LM),
    ZooModel("llama", "transformers", "Llama", _hf_text(
        "LlamaForCausalLM", "LlamaConfig", loss="mse", **_DECODER), config=_LM_GQA),
    ZooModel("qwen2", "transformers", "Qwen2", _hf_text(
        "Qwen2ForCausalLM", "Qwen2Config", loss="mse", **_DECODER), config=_LM_GQA),
    ZooModel("mistral", "transformers", "Mistral", _hf_text(
        "MistralForCausalLM", "MistralConfig", loss="mse", **_DECODER), config=_LM_GQA),
    ZooModel("bloom", "transformers", "BLOOM", _hf_text(
        "BloomForCausalLM", "BloomConfig", loss="mse", hidden_size=32, n_layer=2,
        n_head=2, vocab_size=VOCAB), config=_LM),
    ZooModel("opt", "transformers", "OPT", _hf_text(
        "OPTForCausalLM", "OPTConfig", loss="mse", hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, ffn_dim=64, vocab_size=VOCAB, max_position_embeddings=64,
        word_embed_proj_dim=32, bos_token_id=0, eos_token_id=0, pad_token_id=1),
        config=_LM),
    # -- transformers: audio and vision ----------------------------------------------------
    ZooModel("whisper-encoder", "transformers", "Whisper encoder", _hf_audio(
        "WhisperModel", "WhisperConfig", (16, 16), "last_hidden_state", "mse", encoder=True,
        d_model=32, encoder_layers=2, encoder_attention_heads=2, decoder_layers=1,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
        max_source_positions=8, vocab_size=VOCAB, pad_token_id=0, bos_token_id=0,
        eos_token_id=0, decoder_start_token_id=0), config="d_model 32, 2 layers, 16 mel bins"),
    ZooModel("wav2vec2", "transformers", "Wav2Vec2", _hf_audio(
        "Wav2Vec2ForSequenceClassification", "Wav2Vec2Config", (400,), "logits",
        "cross_entropy", num_labels=CLASSES, conv_dim=(16, 16), conv_kernel=(10, 3),
        conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        classifier_proj_size=16, **_TEXT), config="hidden 32, 2 layers, 400 samples"),
    ZooModel("hf-vit", "transformers", "ViT", _hf_vision(
        "ViTForImageClassification", "ViTConfig", image_size=32, patch_size=8,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        config="32×32, patch 8, hidden 32, 2 layers"),
    ZooModel("hf-swin", "transformers", "Swin", _hf_vision(
        "SwinForImageClassification", "SwinConfig", image_size=32, patch_size=2,
        embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4),
        config="32×32, patch 2, window 4, dim 16"),
    ZooModel("hf-mobilevit", "transformers", "MobileViT", _hf_vision(
        "MobileViTForImageClassification", "MobileViTConfig", 64, image_size=64,
        hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48]),
        BN, "64×64, hidden 16/24/32"),
    ZooModel("hf-convnext", "transformers", "ConvNeXt", _hf_vision(
        "ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1]), config="32×32, widths 8-32"),
]


# -- one model -------------------------------------------------------------------------------

@dataclass
class Comparison:
    """edgetrain's gradients against torch's on one model in one batch-norm mode."""

    mode: str
    loss_et: float
    loss_torch: float
    worst: float = 0.0                          # the largest relative error of a parameter
    worst_param: str = ""
    bad: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    mixed: bool = False
    noise: float = 0.0        # the relative error float64 rounding alone can cause here


def _labels(out: Any, loss: str) -> np.ndarray:
    rng = np.random.default_rng(4)
    if loss == "cross_entropy":
        return rng.integers(0, out.shape[1], out.shape[0]).astype(np.int64)
    return rng.standard_normal(tuple(out.shape))


def _torch_gradients(module: Any, inputs: tuple[Any, ...], y: np.ndarray, loss: str,
                     mode: str) -> tuple[float, dict[str, np.ndarray]]:
    import torch
    import torch.nn.functional as F

    state = {k: v.clone() for k, v in module.state_dict().items()}
    module.train(mode == "train")
    module.zero_grad(set_to_none=True)
    with onnx_hard_activations():
        out = module(*inputs)
    target = torch.as_tensor(y)
    value = F.cross_entropy(out, target) if loss == "cross_entropy" else F.mse_loss(out, target)
    value.backward()
    module.eval()
    module.load_state_dict(state)  # train mode moved the running statistics
    grads = {k: p.grad.detach().numpy().copy() for k, p in module.named_parameters()
             if p.grad is not None}
    return float(value.detach()), grads


@dataclass
class Step:
    """What one edgetrain step revealed."""

    loss: float
    grads: dict[str, np.ndarray]        # w₀ − w₁ of every trained tensor
    before: dict[str, np.ndarray]       # w₀
    untrained: dict[str, np.ndarray]    # float weights the file keeps but does not train
    mixed: bool                         # the graph computes part of itself in float32
    notes: list[str]


def _rounding_noise(module: Any, inputs: tuple[Any, ...], y: np.ndarray, loss: str,
                    mode: str, g_t: dict[str, np.ndarray]) -> float:
    """The relative gradient error float64 rounding alone can cause on this problem.

    torch's gradients are recomputed with every weight moved by a relative ``η = 1e-12``;
    they move by a relative ``r``, so the problem amplifies relative perturbations by
    ``r/η`` and rounding (``ε``) by ``r·ε/η``. Batch statistics over two 1×1 feature maps
    (a 32×32 image at a network's last stage) make that reach 1e-6, far above the 1e-12 of
    a well-conditioned model, and still far below a wrong rule's error.
    """
    import torch

    gen = torch.Generator().manual_seed(6)
    params = list(module.parameters())
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.mul_(1.0 + NOISE_STEP * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    try:
        _, moved = _torch_gradients(module, inputs, y, loss, mode)
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)
    big = max((float(np.abs(g).max()) for g in g_t.values() if g.size), default=0.0)
    r = max((float(np.abs(moved[k] - g).max()) / max(float(np.abs(g).max()), FLOOR * big,
                                                     1e-300)
             for k, g in g_t.items() if k in moved), default=0.0)
    return r * float(np.finfo(np.float64).eps) / NOISE_STEP


def _edgetrain_step(module: Any, inputs: tuple[Any, ...], y: np.ndarray, loss: str,
                    mode: str) -> Step:
    """Export, compile and one SGD(lr=1) step through the public API."""
    from onnx import TensorProto, numpy_helper

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tm = et.from_torch(module, inputs if len(inputs) > 1 else inputs[0], loss=loss,
                           optimizer=et.optim.SGD(lr=1.0), batch_norm=mode)
    notes = [one_line(str(w.message)) for w in caught if "stay frozen" in str(w.message)]
    m = et.load(tm.proto, backend="reference")
    names = [s.name for s in m.signatures["train"].inputs if s.name not in ("y", "lr")]
    feeds = dict(zip(names, [t.numpy() for t in inputs], strict=True))
    before = m.parameters()
    value = float(np.asarray(m.run("train", **feeds, y=y)["loss"]))
    after = m.parameters()
    untrained = {t.name: numpy_helper.to_array(t) for t in tm.proto.graph.initializer
                 if t.name not in before and t.data_type == TensorProto.DOUBLE}
    mixed = any(n.op_type == "Cast" and any(
        a.name == "to" and a.i in (TensorProto.FLOAT, TensorProto.FLOAT16) for a in n.attribute)
        for n in tm.proto.graph.node)
    return Step(value, {k: before[k] - after[k] for k in before}, before, untrained, mixed,
                notes)


def _match(onnx_values: dict[str, np.ndarray], params: dict[str, np.ndarray]
           ) -> dict[str, list[tuple[str, bool]]]:
    """torch name → [(onnx name, transposed)] by name, then by value (module docstring)."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for k, v in onnx_values.items():
        if k in params:
            out.setdefault(k, []).append((k, False))
            continue
        for name, p in params.items():
            if p.size != v.size:
                continue
            if np.array_equal(p.reshape(-1), v.reshape(-1)):
                out.setdefault(name, []).append((k, False))
                break
            if p.ndim == 2 and v.ndim == 2 and np.array_equal(p.T, v):
                out.setdefault(name, []).append((k, True))
                break
    return out


def compare(module: Any, inputs: tuple[Any, ...], loss: str, mode: str) -> Comparison:
    """edgetrain vs torch on one model and mode (raises what edgetrain raises)."""
    import torch

    module.eval()
    with torch.no_grad():
        out = module(*inputs)
    y = _labels(out, loss)
    params = {k: p.detach().numpy().copy() for k, p in module.named_parameters()}
    step = _edgetrain_step(module, inputs, y, loss, mode)
    loss_t, g_t = _torch_gradients(module, inputs, y, loss, mode)
    c = Comparison(mode, step.loss, loss_t, mixed=step.mixed)
    c.noise = _rounding_noise(module, inputs, y, loss, mode, g_t)
    matched = _match(step.before, params)
    c.unmatched = sorted(set(step.before) - {k for v in matched.values() for k, _ in v})
    kept = _match(step.untrained, {k: v for k, v in params.items() if k not in matched})
    big = max((float(np.abs(g).max()) for g in g_t.values() if g.size), default=0.0)
    rtol, loss_rtol = (RTOL_MIXED, LOSS_RTOL_MIXED) if step.mixed else (RTOL, LOSS_RTOL)
    rtol = max(rtol, NOISE_SAFETY * c.noise)
    for name, grad in g_t.items():
        if name not in matched:
            if np.abs(grad).max() > 0:  # torch trains it, edgetrain does not
                (c.frozen if name in kept else c.folded).append(name)
            continue
        pairs = matched[name]
        if len(pairs) > 1:
            c.tied.append(name)
        got = sum((step.grads[k].T if t else step.grads[k].reshape(grad.shape))
                  for k, t in pairs)
        denom = max(float(np.abs(grad).max()), FLOOR * big, 1e-300)
        rel = float(np.abs(got - grad).max()) / denom
        if rel > c.worst:
            c.worst, c.worst_param = rel, name
        if not rel <= rtol:
            c.bad.append(f"{name} (rel. error {rel:.2g})")
    if not abs(step.loss - loss_t) <= loss_rtol * max(1.0, abs(loss_t)):
        c.bad.insert(0, f"loss {step.loss:.12g} vs torch {loss_t:.12g}")
    if c.frozen:
        c.bad.append(f"left frozen though torch's gradient is not zero: "
                     f"{', '.join(c.frozen[:5])} ({'; '.join(step.notes)[:200]})")
    return c


_SEVERITY = ("crash", "wrong", "refused", "export-failed", "correct")


def run_model(zm: ZooModel) -> Result:
    """Classify one zoo model over its batch-norm modes (the worst mode decides)."""
    import torch

    start = time.perf_counter()
    torch.manual_seed(0)
    info: dict[str, Any] = {"source": zm.source, "family": zm.family, "config": zm.config}
    try:
        with time_limit(MODEL_SECONDS):
            module, inputs, loss = zm.build()
            module = float32_constants(off_kinks(module.double().eval()))
            inputs = tuple(t.double() if t.is_floating_point() else t for t in inputs)
            info["params"] = int(sum(p.numel() for p in module.parameters()))
            info["loss"] = loss
            outcomes = [_one_mode(module, inputs, loss, mode, info) for mode in zm.batch_norm]
    except CaseTimeout as e:
        outcomes = [("crash", one_line(str(e)))]
    status, detail = min(outcomes, key=lambda o: _SEVERITY.index(o[0]))
    return Result(zm.name, zm.family, status, detail,
                  round(time.perf_counter() - start, 1), info)


def _one_mode(module: Any, inputs: tuple[Any, ...], loss: str, mode: str,
              info: dict[str, Any]) -> tuple[str, str]:
    try:
        c = compare(module, inputs, loss, mode)
    except CaseTimeout:
        raise
    except et.NonFiniteError as e:  # torch's loss is finite (it was computed to build y)
        return "wrong", f"[{mode}] non-finite where torch's loss is finite: {one_line(str(e))}"
    except et.EdgetrainError as e:
        msg = one_line(str(e))
        if msg.startswith("torch.onnx.export failed"):
            return "export-failed", f"[{mode}] {msg}"
        if not is_clear_error(e) or "backend failed" in msg or isinstance(e, et.FormatError):
            return "crash", f"[{mode}] {type(e).__name__}: {msg}"
        return "refused", f"[{mode}] {msg}"
    except Exception as e:
        return "crash", f"[{mode}] {crash_detail(e)}"
    info[mode] = {"worst": c.worst, "worst_param": c.worst_param, "mixed": c.mixed,
                  "noise": c.noise,
                  "tied": c.tied,
                  "folded": c.folded, "unmatched": c.unmatched, "loss": c.loss_et,
                  "loss_torch": c.loss_torch}
    if c.bad:
        return "wrong", one_line(f"[{mode}] {len(c.bad)} differ: {'; '.join(c.bad[:4])}")
    if c.unmatched:  # trained tensors no torch parameter explains: not verified
        return "crash", one_line(f"[{mode}] cannot verify {len(c.unmatched)} trained tensors "
                                 f"(no torch parameter matches): {c.unmatched[:4]}")
    return "correct", ""


def model_names() -> list[str]:
    return [m.name for m in MODELS]


@cache
def result(name: str) -> Result:
    """The (memoized) result of one model: tests and the report share one run per process."""
    return run_model(next(m for m in MODELS if m.name == name))


def run_all(names: list[str] | None = None, progress: bool = False) -> list[Result]:
    out = []
    for i, n in enumerate(names or model_names()):
        out.append(result(n))
        if progress:
            r = out[-1]
            print(f"[{i + 1}] {n}: {r.status} ({r.seconds:.0f}s) {r.detail[:200]}", flush=True)
    return out
