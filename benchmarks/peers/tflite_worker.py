"""TFLite on-device training, the seed tutorial's path: a ``tf.Module`` with ``train`` /
``infer`` / ``save`` / ``restore`` tf.functions, converted with Select-TF-ops (Flex) and resource
variables, run through ``tf.lite.Interpreter`` signature runners. Keras 2 (tf_keras), as the
tutorial needs; TF 2.18.1 is the last release whose train signature still runs here."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from _common import Peer, main, threads

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class TFLitePeer(Peer):
    name = "tflite"

    def import_runtime(self) -> str:
        import tensorflow as tf

        # The Flex (TF) kernels run on TF's own pools; builtin kernels on num_threads.
        if threads() is not None:
            tf.config.threading.set_intra_op_parallelism_threads(threads())
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self.tf = tf
        return f"tensorflow {tf.__version__} (tf.lite.Interpreter + Flex)"

    def _keras(self, spec: dict[str, Any], weights: dict[str, np.ndarray]) -> Any:
        keras = self.tf.keras
        arch = spec["arch"]
        if arch["kind"] == "mlp":
            model = keras.Sequential([
                keras.layers.Input(shape=tuple(arch["in_shape"])),
                keras.layers.Flatten(),
                keras.layers.Dense(arch["hidden"], activation="relu"),
                keras.layers.Dense(arch["classes"])])
            model.layers[1].set_weights([weights["fc1.weight"].T, weights["fc1.bias"]])
            model.layers[2].set_weights([weights["fc2.weight"].T, weights["fc2.bias"]])
            return model
        if arch["kind"] == "cnn":
            c1, c2 = arch["channels"]
            cin, h, w = arch["in_shape"]
            model = keras.Sequential([
                keras.layers.Input(shape=(h, w, cin)),
                keras.layers.Conv2D(c1, 3, activation="relu"), keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(c2, 3, activation="relu"), keras.layers.MaxPooling2D(2),
                keras.layers.Flatten(),
                keras.layers.Dense(arch["hidden"], activation="relu"),
                keras.layers.Dense(arch["classes"])])
            conv = [m for m in model.layers if isinstance(m, keras.layers.Conv2D)]
            dense = [m for m in model.layers if isinstance(m, keras.layers.Dense)]
            for layer, n in zip(conv, ("conv1", "conv2")):  # OIHW → HWIO
                layer.set_weights([weights[f"{n}.weight"].transpose(2, 3, 1, 0),
                                   weights[f"{n}.bias"]])
            # NCHW flatten (c, h, w) → NHWC flatten (h, w, c): permute fc1's input rows.
            w1 = weights["fc1.weight"]
            k1 = w1.reshape(w1.shape[0], c2, 5, 5).transpose(2, 3, 1, 0).reshape(-1, w1.shape[0])
            dense[0].set_weights([k1, weights["fc1.bias"]])
            dense[1].set_weights([weights["fc2.weight"].T, weights["fc2.bias"]])
            return model
        raise ValueError(f"the TFLite peer has no {arch['kind']!r} model")

    def build(self, spec: dict[str, Any], weights: dict[str, np.ndarray],
              batches: list[tuple[np.ndarray, np.ndarray]], outdir: str) -> list[str]:
        tf = self.tf
        keras_model = self._keras(spec, weights)
        o = spec["optimizer"]
        if o["name"] == "sgd":
            opt = tf.keras.optimizers.SGD(learning_rate=o["lr"])
        else:
            opt = tf.keras.optimizers.Adam(learning_rate=o["lr"], beta_1=o["betas"][0],
                                           beta_2=o["betas"][1], epsilon=o["eps"])
        keras_model.compile(optimizer=opt, loss=tf.keras.losses.CategoricalCrossentropy(
            from_logits=True))
        x_shape = [None, *self._x_shape(spec)]
        classes = spec["arch"]["classes"]

        class Trainable(tf.Module):
            def __init__(self, model: Any) -> None:
                super().__init__()
                self.model = model

            @tf.function(input_signature=[tf.TensorSpec(x_shape, tf.float32),
                                          tf.TensorSpec([None, classes], tf.float32)])
            def train(self, x: Any, y: Any) -> Any:
                with tf.GradientTape() as tape:
                    prediction = self.model(x)
                    loss = self.model.loss(y, prediction)
                gradients = tape.gradient(loss, self.model.trainable_variables)
                self.model.optimizer.apply_gradients(
                    zip(gradients, self.model.trainable_variables))
                return {"loss": loss}

            @tf.function(input_signature=[tf.TensorSpec(x_shape, tf.float32)])
            def infer(self, x: Any) -> Any:
                return {"logits": self.model(x)}

            @tf.function(input_signature=[tf.TensorSpec(shape=[], dtype=tf.string)])
            def save(self, checkpoint_path: Any) -> Any:
                names = [w.name for w in self.model.weights]
                tf.raw_ops.Save(filename=checkpoint_path, tensor_names=names,
                                data=list(self.model.weights), name="save")
                return {"checkpoint_path": checkpoint_path}

        module = Trainable(keras_model)
        saved = os.path.join(outdir, "saved_model")
        tf.saved_model.save(module, saved, signatures={
            "train": module.train.get_concrete_function(),
            "infer": module.infer.get_concrete_function(),
            "save": module.save.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                               tf.lite.OpsSet.SELECT_TF_OPS]
        converter.experimental_enable_resource_variables = True
        path = os.path.join(outdir, "model.tflite")
        with open(path, "wb") as f:
            f.write(converter.convert())
        return [path]

    @staticmethod
    def _x_shape(spec: dict[str, Any]) -> list[int]:
        shape = list(spec["arch"]["in_shape"])
        return [*shape[1:], shape[0]] if spec["arch"]["kind"] == "cnn" else shape

    def load(self, spec: dict[str, Any], outdir: str) -> None:
        self.spec = spec
        self.interp = self.tf.lite.Interpreter(model_path=os.path.join(outdir, "model.tflite"),
                                               num_threads=threads() or os.cpu_count())
        self.train = self.interp.get_signature_runner("train")

    def prepare(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[Any]:
        classes = self.spec["arch"]["classes"]
        out = []
        for x, y in batches:
            if self.spec["arch"]["kind"] == "cnn":
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            out.append((x, np.eye(classes, dtype=np.float32)[y]))
        return out

    def step(self, batch: Any) -> float:
        x, y = batch
        return float(self.train(x=x, y=y)["loss"])


if __name__ == "__main__":
    main(TFLitePeer)
