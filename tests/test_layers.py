"""keras_odir.layers on the torch backend: ChannelsLastConv2D keeps its HWIO kernel in (O, H, W, I) memory order,
so the convolution takes its OIHW view without a copy, and computes what torch's own conv2d computes, forward and
backward, through assignment, training steps (the optimizer's buffers in the same layout) and a saved model;
ChannelsLastDepthwiseConv2D computes and trains as Keras' own DepthwiseConv2D; ChannelsLastZeroPadding2D pads as
numpy does, without building a Keras operation per call; the pooling layers pool as Keras' own, without a copy;
TorchConcatenate joins as numpy does."""

import keras
import numpy as np
import pytest

from keras_odir.layers import (
    ChannelsLastAveragePooling2D,
    ChannelsLastConv2D,
    ChannelsLastDepthwiseConv2D,
    ChannelsLastMaxPooling2D,
    ChannelsLastZeroPadding2D,
    TorchConcatenate,
)
from keras_odir.optimizers import TorchSGD

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the copy-free path is torch's")
torch = pytest.importorskip("torch")
F = torch.nn.functional


def _layer(strides=1, padding="same", size=9):
    layer = ChannelsLastConv2D(5, 3, strides=strides, padding=padding, use_bias=True)
    layer.build((None, size, size, 4))
    rng = np.random.default_rng(0)
    layer.set_weights([rng.normal(size=(3, 3, 4, 5)).astype("float32"), rng.normal(size=5).astype("float32")])
    return layer


def _in_oihw_channels_last(kernel) -> bool:
    return kernel.permute(3, 2, 0, 1).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("strides, padding", [(1, "same"), (2, "valid")])
def test_forward_and_gradients_equal_torch_conv2d(strides, padding):
    layer = _layer(strides, padding)
    kernel, bias = (torch.tensor(w) for w in layer.get_weights())
    assert _in_oihw_channels_last(layer.kernel.value)
    x = torch.tensor(np.random.default_rng(1).normal(size=(2, 9, 9, 4)).astype("float32"), requires_grad=True)
    ours = layer(x)
    ours.square().sum().backward()
    ref_kernel = kernel.permute(3, 2, 0, 1).clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = F.conv2d(x_ref.permute(0, 3, 1, 2), ref_kernel, bias, stride=strides,
                   padding=1 if padding == "same" else 0).permute(0, 2, 3, 1)
    ref.square().sum().backward()
    np.testing.assert_allclose(ours.detach().numpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), x_ref.grad.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(layer.kernel.value.grad.permute(3, 2, 0, 1).numpy(), ref_kernel.grad.numpy(),
                               rtol=1e-5, atol=1e-4)


def test_layout_and_values_survive_training_steps_and_saving(tmp_path):
    inputs = keras.Input((9, 9, 4))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(_layer()(inputs)))
    conv = model.layers[1]
    parameter = conv.kernel.value
    model.compile(optimizer=TorchSGD(learning_rate=0.1, momentum=0.9), loss="mse")
    x = np.random.default_rng(2).normal(size=(4, 9, 9, 4)).astype("float32")
    y = np.random.default_rng(3).normal(size=(4, 5)).astype("float32")
    # the same steps on a plain torch copy: SGD with momentum on an OIHW contiguous kernel
    ref_kernel = torch.tensor(conv.get_weights()[0]).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    ref_bias = torch.tensor(conv.get_weights()[1]).requires_grad_(True)
    ref_opt = torch.optim.SGD([ref_kernel, ref_bias], lr=0.1, momentum=0.9)
    for _ in range(3):
        model.train_on_batch(x, y)
        ref_opt.zero_grad()
        out = F.conv2d(torch.tensor(x).permute(0, 3, 1, 2), ref_kernel, ref_bias, padding=1).mean((2, 3))
        F.mse_loss(out, torch.tensor(y)).backward()
        ref_opt.step()
    assert conv.kernel.value is parameter and _in_oihw_channels_last(parameter)
    buffer = model.optimizer.momentum_buffers[model.optimizer._get_variable_index(conv.kernel)].value
    assert buffer.stride() == parameter.stride()  # the batched update runs over matching strides
    np.testing.assert_allclose(conv.get_weights()[0], ref_kernel.detach().permute(2, 3, 1, 0).numpy(), atol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert _in_oihw_channels_last(loaded.layers[1].kernel.value)
    np.testing.assert_array_equal(loaded.layers[1].get_weights()[0], conv.get_weights()[0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)))


def _depthwise_pair(strides, padding, multiplier):
    """ChannelsLastDepthwiseConv2D and Keras' own DepthwiseConv2D with the same weights (bias included)."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 3, 4, multiplier)).astype("float32"),
               rng.normal(size=4 * multiplier).astype("float32")]
    pair = []
    for cls in (ChannelsLastDepthwiseConv2D, keras.layers.DepthwiseConv2D):
        layer = cls(3, strides=strides, padding=padding, depth_multiplier=multiplier)
        layer.build((None, 9, 9, 4))
        layer.set_weights(weights)
        pair.append(layer)
    return pair


@pytest.mark.parametrize("strides, padding, multiplier", [(1, "same", 1), (2, "valid", 2)])
def test_depthwise_computes_what_keras_computes_forward_and_backward(strides, padding, multiplier):
    ours, keras_own = _depthwise_pair(strides, padding, multiplier)
    assert ours.kernel.value.permute(2, 3, 0, 1).is_contiguous()  # its torch form (C * M, 1, 3, 3) is a view
    rng = np.random.default_rng(1)
    left, right = (torch.tensor(rng.normal(size=(2, 9, 9, 4)).astype("float32")) for _ in range(2))
    results = []
    for layer in (ours, keras_own):
        # called on both eyes, as a shared backbone is: the two calls' kernel gradients add up
        inputs = [x.clone().requires_grad_(True) for x in (left, right)]
        outputs = [layer(x) for x in inputs]
        sum(y.square().sum() for y in outputs).backward()
        results.append([*(y.detach() for y in outputs), *(x.grad for x in inputs),
                        layer.kernel.value.grad, layer.bias.value.grad])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_depthwise_layout_and_values_survive_training_steps_and_saving(tmp_path):
    x = np.random.default_rng(2).normal(size=(4, 9, 9, 4)).astype("float32")
    y = np.random.default_rng(3).normal(size=(4, 8)).astype("float32")
    models = []
    for layer in _depthwise_pair(1, "same", 2):
        inputs = keras.Input((9, 9, 4))
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(layer(inputs)))
        model.compile(optimizer=TorchSGD(learning_rate=0.1, momentum=0.9), loss="mse")
        for _ in range(3):
            model.train_on_batch(x, y)
        models.append(model)
    ours, keras_own = (m.layers[1] for m in models)
    assert ours.kernel.value.permute(2, 3, 0, 1).is_contiguous()
    optimizer = models[0].optimizer
    buffer = optimizer.momentum_buffers[optimizer._get_variable_index(ours.kernel)].value
    assert buffer.stride() == ours.kernel.value.stride()
    np.testing.assert_allclose(ours.get_weights()[0], keras_own.get_weights()[0], rtol=1e-5, atol=1e-6)
    models[0].save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert loaded.layers[1].kernel.value.permute(2, 3, 0, 1).is_contiguous()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(models[0](x)))


@pytest.mark.parametrize("padding", [1, ((1, 2), (3, 0))])
def test_zero_padding_pads_as_numpy_and_builds_no_keras_operation(padding, monkeypatch):
    x = np.random.default_rng(2).normal(size=(2, 5, 6, 3)).astype("float32")
    (top, bottom), (left, right) = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    expected = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    layer = ChannelsLastZeroPadding2D(padding)
    layer.build(x.shape)

    def no_operation(*args, **kwargs):
        raise AssertionError("a Keras operation was built in the call")

    monkeypatch.setattr(keras.src.ops.operation.Operation, "__init__", no_operation)
    got = layer.call(torch.from_numpy(x))
    np.testing.assert_array_equal(got.numpy(), expected)
    assert got.is_contiguous()


@pytest.mark.parametrize("ours, keras_own, pool_size, strides", [
    (ChannelsLastMaxPooling2D, keras.layers.MaxPooling2D, 3, 2),
    (ChannelsLastAveragePooling2D, keras.layers.AveragePooling2D, 2, 2),
])
def test_pooling_equals_keras_own_forward_and_backward_without_a_copy(ours, keras_own, pool_size, strides):
    x = np.random.default_rng(4).normal(size=(2, 9, 8, 6)).astype("float32")
    results = []
    for layer_class in (ours, keras_own):
        inputs = torch.from_numpy(x).requires_grad_(True)
        out = layer_class(pool_size, strides=strides)(inputs)
        weights = torch.from_numpy(np.random.default_rng(5).normal(size=out.shape).astype("float32"))
        (out * weights).sum().backward()
        results.append((out, inputs.grad))
    (got, got_grad), (expected, expected_grad) = results
    np.testing.assert_allclose(got.detach().numpy(), expected.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_grad.numpy(), expected_grad.numpy(), rtol=1e-6, atol=1e-6)
    assert got.is_contiguous()  # channels_last pooling: its NHWC view needs no copy (Keras' own is a strided view)
    assert not expected.is_contiguous()


def test_concatenate_joins_as_numpy_forward_and_backward():
    parts = [np.random.default_rng(i).normal(size=(2, 3, 4, channels)).astype("float32")
             for i, channels in enumerate((5, 1, 3))]
    inputs = [torch.from_numpy(p).requires_grad_(True) for p in parts]
    layer = TorchConcatenate(axis=-1)
    layer.build([p.shape for p in parts])
    got = layer(inputs)
    np.testing.assert_array_equal(got.detach().numpy(), np.concatenate(parts, axis=-1))
    got.backward(torch.arange(got.numel(), dtype=torch.float32).reshape(got.shape))
    expected_grads = np.split(np.arange(got.numel(), dtype="float32").reshape(got.shape), [5, 6], axis=-1)
    for tensor, expected in zip(inputs, expected_grads):
        np.testing.assert_array_equal(tensor.grad.numpy(), expected)
