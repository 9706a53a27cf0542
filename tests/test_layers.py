"""keras_odir.layers on the torch backend: ChannelsLastConv2D keeps its HWIO kernel in (O, H, W, I) memory order,
so the convolution takes its OIHW view without a copy, and computes what torch's own conv2d computes, forward and
backward, through assignment, training steps (the optimizer's buffers in the same layout) and a saved model;
ChannelsLastZeroPadding2D pads as numpy does, without building a Keras operation per call."""

import keras
import numpy as np
import pytest

from keras_odir.layers import ChannelsLastConv2D, ChannelsLastZeroPadding2D
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
