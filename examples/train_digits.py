"""Train the shipped example model: a small CNN on scikit-learn's 8x8 digits, exported to ONNX.

The script is deterministic: running it twice produces byte-identical ``digits_cnn.onnx``, ``calib.npz`` and
``val.npz`` (fixed seeds, training in float64 numpy, zip entries with a fixed timestamp).

Outputs, all written next to this script:

* ``digits_cnn.onnx`` -- input ``input`` float32 [1, 1, 8, 8] (NCHW), output ``logits`` float32 [1, 10];
  opset 17, IR version 9; ops Conv, Relu, Flatten, Gemm only.
* ``calib.npz`` -- ``input`` float32 [200, 1, 8, 8]: calibration samples (drawn from the training split).
* ``val.npz`` -- ``input`` float32 [360, 1, 8, 8] and ``labels`` int64 [360]: held-out validation samples,
  disjoint from the training split.

The network is trained in pure numpy (im2col convolutions, softmax cross-entropy, Adam, mini-batches), then
checked after export by running the saved ONNX file in onnxruntime one sample at a time.

Usage::

    python examples/train_digits.py
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent
MODEL_PATH = HERE / "digits_cnn.onnx"
CALIB_PATH = HERE / "calib.npz"
VAL_PATH = HERE / "val.npz"

SEED = 20240531
N_VAL = 360
N_CALIB = 200
N_CLASSES = 10
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
OPSET = 17
IR_VERSION = 9
MIN_VAL_ACCURACY = 0.96
MIN_ORT_AGREEMENT = 0.995

# (name, in_channels, out_channels, stride); every conv is 3x3 with padding 1 and followed by a Relu.
CONV_SPECS: tuple[tuple[str, int, int, int], ...] = (
    ("conv1", 1, 8, 1),
    ("conv2", 8, 16, 2),
    ("conv3", 16, 16, 1),
)
KERNEL = 3
PAD = 1
FC_IN = 16 * 4 * 4


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_splits(seed: int) -> Splits:
    """Load digits, scale to [0, 1] and split into train / calibration (subset of train) / validation."""
    digits = load_digits()
    images = (digits.images.astype(np.float64) / 16.0)[:, None, :, :]  # N x 1 x 8 x 8
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    val_idx, train_idx = order[:N_VAL], order[N_VAL:]
    calib_idx = train_idx[:N_CALIB]
    return Splits(
        x_train=images[train_idx],
        y_train=labels[train_idx],
        x_calib=images[calib_idx],
        x_val=images[val_idx],
        y_val=labels[val_idx],
    )


# ---------------------------------------------------------------------------------------------------------
# Numpy CNN
# ---------------------------------------------------------------------------------------------------------


def conv_out_size(size: int, stride: int) -> int:
    return (size + 2 * PAD - KERNEL) // stride + 1


def im2col(x: np.ndarray, stride: int) -> np.ndarray:
    """N x C x H x W -> (N*Ho*Wo) x (C*K*K), columns ordered (C, kh, kw) like an ONNX Conv weight."""
    n, c, h, w = x.shape
    ho, wo = conv_out_size(h, stride), conv_out_size(w, stride)
    xp = np.pad(x, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))
    cols = np.empty((n, c, KERNEL, KERNEL, ho, wo), dtype=x.dtype)
    for i in range(KERNEL):
        for j in range(KERNEL):
            cols[:, :, i, j] = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, c * KERNEL * KERNEL)


def col2im(dcols: np.ndarray, x_shape: tuple[int, ...], stride: int) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add column gradients back to an N x C x H x W gradient."""
    n, c, h, w = x_shape
    ho, wo = conv_out_size(h, stride), conv_out_size(w, stride)
    d = dcols.reshape(n, ho, wo, c, KERNEL, KERNEL).transpose(0, 3, 4, 5, 1, 2)
    dxp = np.zeros((n, c, h + 2 * PAD, w + 2 * PAD), dtype=dcols.dtype)
    for i in range(KERNEL):
        for j in range(KERNEL):
            dxp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride] += d[:, :, i, j]
    return dxp[:, :, PAD : PAD + h, PAD : PAD + w]


Params = dict[str, np.ndarray]


def init_params(rng: np.random.Generator) -> Params:
    """He-normal weights, zero biases."""
    params: Params = {}
    for name, cin, cout, _ in CONV_SPECS:
        fan_in = cin * KERNEL * KERNEL
        params[f"{name}.weight"] = rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin, KERNEL, KERNEL))
        params[f"{name}.bias"] = np.zeros(cout)
    params["fc.weight"] = rng.normal(0.0, np.sqrt(1.0 / FC_IN), (N_CLASSES, FC_IN))
    params["fc.bias"] = np.zeros(N_CLASSES)
    return params


@dataclass
class ConvCache:
    x_shape: tuple[int, ...]
    cols: np.ndarray
    out: np.ndarray  # post-Relu activation, N x Cout x Ho x Wo


def forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, list[ConvCache], np.ndarray]:
    """Return logits, per-conv caches and the flattened features fed to the Gemm."""
    caches: list[ConvCache] = []
    h = x
    for name, _, cout, stride in CONV_SPECS:
        n, _, hh, ww = h.shape
        ho, wo = conv_out_size(hh, stride), conv_out_size(ww, stride)
        cols = im2col(h, stride)
        w = params[f"{name}.weight"].reshape(cout, -1)
        z = cols @ w.T + params[f"{name}.bias"]
        out = np.maximum(z, 0.0).reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)
        caches.append(ConvCache(x_shape=h.shape, cols=cols, out=out))
        h = out
    feats = h.reshape(h.shape[0], -1)  # same (C, H, W) order as ONNX Flatten
    logits = feats @ params["fc.weight"].T + params["fc.bias"]
    return logits, caches, feats


def predict(params: Params, x: np.ndarray) -> np.ndarray:
    return forward(params, x)[0].argmax(axis=1)


def loss_and_grads(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """Mean softmax cross-entropy over the batch and its gradients with respect to every parameter."""
    logits, caches, feats = forward(params, x)
    n = x.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(n), y].mean())

    grads: Params = {}
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), y] -= 1.0
    dlogits /= n
    grads["fc.weight"] = dlogits.T @ feats
    grads["fc.bias"] = dlogits.sum(axis=0)
    dh = (dlogits @ params["fc.weight"]).reshape(caches[-1].out.shape)
    for (name, _, cout, stride), cache in zip(reversed(CONV_SPECS), reversed(caches), strict=True):
        dz = dh * (cache.out > 0.0)
        dz_flat = dz.transpose(0, 2, 3, 1).reshape(-1, cout)
        w = params[f"{name}.weight"]
        grads[f"{name}.weight"] = (dz_flat.T @ cache.cols).reshape(w.shape)
        grads[f"{name}.bias"] = dz_flat.sum(axis=0)
        if name != CONV_SPECS[0][0]:
            dh = col2im(dz_flat @ w.reshape(cout, -1), cache.x_shape, stride)
    return loss, grads


def train(splits: Splits, rng: np.random.Generator) -> Params:
    """Adam with a cosine learning-rate schedule and decoupled weight decay on the weights."""
    params = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n_train = len(splits.y_train)
    steps_per_epoch = -(-n_train // BATCH_SIZE)
    total_steps = EPOCHS * steps_per_epoch
    step = 0
    for epoch in range(EPOCHS):
        order = rng.permutation(n_train)
        epoch_loss = 0.0
        for start in range(0, n_train, BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            loss, grads = loss_and_grads(params, splits.x_train[idx], splits.y_train[idx])
            epoch_loss += loss * len(idx)
            step += 1
            lr = LEARNING_RATE * 0.5 * (1.0 + np.cos(np.pi * (step - 1) / total_steps))
            for k, p in params.items():
                g = grads[k]
                m[k] = beta1 * m[k] + (1.0 - beta1) * g
                v[k] = beta2 * v[k] + (1.0 - beta2) * g * g
                m_hat = m[k] / (1.0 - beta1**step)
                v_hat = v[k] / (1.0 - beta2**step)
                p -= lr * m_hat / (np.sqrt(v_hat) + eps)
                if k.endswith(".weight"):
                    p -= lr * WEIGHT_DECAY * p
        if (epoch + 1) % 10 == 0 or epoch == 0:
            val_acc = float((predict(params, splits.x_val) == splits.y_val).mean())
            print(f"epoch {epoch + 1:3d}  loss {epoch_loss / n_train:.4f}  val acc {val_acc:.4f}")
    return params


# ---------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------


def to_float32(params: Params) -> Params:
    return {k: v.astype(np.float32) for k, v in params.items()}


def build_onnx(params32: Params, n_train: int, val_accuracy: float) -> onnx.ModelProto:
    """Build the ONNX graph Conv/Relu x3 -> Flatten -> Gemm with the weights as initializers."""
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    prev = "input"
    for idx, (name, _, _, stride) in enumerate(CONV_SPECS, start=1):
        w_name, b_name = f"{name}.weight", f"{name}.bias"
        initializers += [
            numpy_helper.from_array(params32[w_name], w_name),
            numpy_helper.from_array(params32[b_name], b_name),
        ]
        conv_out, relu_out = f"{name}_out", f"relu{idx}_out"
        nodes.append(
            helper.make_node(
                "Conv",
                [prev, w_name, b_name],
                [conv_out],
                name=name,
                kernel_shape=[KERNEL, KERNEL],
                pads=[PAD, PAD, PAD, PAD],
                strides=[stride, stride],
                dilations=[1, 1],
                group=1,
            )
        )
        nodes.append(helper.make_node("Relu", [conv_out], [relu_out], name=f"relu{idx}"))
        prev = relu_out
    nodes.append(helper.make_node("Flatten", [prev], ["flatten_out"], name="flatten", axis=1))
    initializers += [
        numpy_helper.from_array(params32["fc.weight"], "fc.weight"),
        numpy_helper.from_array(params32["fc.bias"], "fc.bias"),
    ]
    nodes.append(
        helper.make_node(
            "Gemm",
            ["flatten_out", "fc.weight", "fc.bias"],
            ["logits"],
            name="fc",
            transB=1,
            alpha=1.0,
            beta=1.0,
        )
    )
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, N_CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model.producer_name = "autoptq-examples"
    model.producer_version = "0.1.0"
    model.doc_string = (
        "Small CNN for scikit-learn's 8x8 digits (pixels / 16 -> [0, 1], NCHW [1, 1, 8, 8]). "
        "Architecture: Conv 1->8 3x3 p1 + Relu, Conv 8->16 3x3 s2 p1 + Relu, Conv 16->16 3x3 p1 + Relu, "
        "Flatten, Gemm 256->10 logits. Trained in pure numpy by examples/train_digits.py "
        f"(seed {SEED}, Adam lr {LEARNING_RATE} cosine, {EPOCHS} epochs, batch {BATCH_SIZE}, "
        f"weight decay {WEIGHT_DECAY}) on {n_train} samples; "
        f"float32 top-1 accuracy on the {N_VAL} held-out samples of val.npz: {val_accuracy:.4f}."
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps and attributes (byte-identical reruns)."""
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, mode="w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def ort_predictions(model_path: Path, x: np.ndarray) -> np.ndarray:
    """Run the saved model one sample at a time (its batch dimension is static 1)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    preds = [int(session.run(["logits"], {"input": x[i : i + 1]})[0].argmax()) for i in range(len(x))]
    return np.asarray(preds, dtype=np.int64)


def count_macs() -> int:
    """Multiply-accumulates of one inference (convolutions and Gemm)."""
    macs, size = 0, 8
    for _, cin, cout, stride in CONV_SPECS:
        size = conv_out_size(size, stride)
        macs += size * size * cout * cin * KERNEL * KERNEL
    return macs + FC_IN * N_CLASSES


def main() -> None:
    np.random.seed(SEED)  # nothing below uses the legacy global RNG; seeded anyway for safety
    splits = load_splits(SEED)
    print(f"train {len(splits.y_train)}  calib {len(splits.x_calib)}  val {len(splits.y_val)}")

    t0 = time.perf_counter()
    params = train(splits, np.random.default_rng(SEED + 1))
    print(f"training time {time.perf_counter() - t0:.1f} s")

    # Evaluate the exact float32 weights that are exported.
    params32 = to_float32(params)
    x_val32 = splits.x_val.astype(np.float32)
    np_preds = predict(params32, x_val32)
    np_acc = float((np_preds == splits.y_val).mean())
    print(f"numpy validation accuracy {np_acc:.4f}")
    if np_acc < MIN_VAL_ACCURACY:
        raise SystemExit(f"validation accuracy {np_acc:.4f} is below the target {MIN_VAL_ACCURACY}")

    model = build_onnx(params32, len(splits.y_train), np_acc)
    onnx.save_model(model, MODEL_PATH)
    save_npz_deterministic(CALIB_PATH, {"input": splits.x_calib.astype(np.float32)})
    save_npz_deterministic(VAL_PATH, {"input": x_val32, "labels": splits.y_val.astype(np.int64)})

    ort_preds = ort_predictions(MODEL_PATH, x_val32)
    ort_acc = float((ort_preds == splits.y_val).mean())
    agreement = float((ort_preds == np_preds).mean())
    print(f"onnxruntime validation accuracy {ort_acc:.4f}  (agreement with numpy {agreement:.4f})")
    assert agreement >= MIN_ORT_AGREEMENT, f"ORT and numpy predictions agree on only {agreement:.4f}"
    print(f"MACs per inference {count_macs()}")
    for path in (MODEL_PATH, CALIB_PATH, VAL_PATH):
        print(f"wrote {path.name} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
