"""SGD with PyTorch's momentum semantics, as a Keras optimizer (every backend)."""

import keras
from keras import ops


def follow_layouts(slots, variables) -> None:
    """On torch, store each optimizer slot in its weight's memory layout (a convolution kernel is kept in (O, H, W, I)
    order: ``keras_odir.layers``), so that the batched updates run over matching strides, as fast as contiguous."""
    if keras.backend.backend() != "torch":
        return
    import torch

    with torch.no_grad():
        for slot, variable in zip(slots, variables):
            if slot is not None and slot.value.stride() != variable.value.stride():
                slot.value.data = torch.empty_like(variable.value).copy_(slot.value)


@keras.saving.register_keras_serializable(package="keras_odir")
class TorchSGD(keras.optimizers.Optimizer):
    """``torch.optim.SGD`` as a Keras optimizer.

    Per weight ``w`` with gradient ``g`` (torch's update, ``maximize=False``)::

        g = g + weight_decay * w                          # coupled L2, as torch
        buf = g (first step) | momentum * buf + (1 - dampening) * g
        d = g + momentum * buf if nesterov else buf       # d = g when momentum == 0
        w = w - learning_rate * d

    Keras' own SGD keeps ``v = momentum * v - learning_rate * g`` (the learning rate folded
    into the velocity), which equals torch only while the learning rate is constant; once a
    schedule changes it, old gradients keep their old learning rate there but take the new
    one here. ``learning_rate`` and ``momentum`` are variables: assign them between epochs
    (``opt.learning_rate = 0.01``; ``opt.momentum = 0.85``), e.g. from a CyclicLR schedule.
    ``reduce_gradients`` (not saved): a function applied to the list of gradients before each step,
    e.g. the mean over the processes of a data-parallel run.
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
        name=None,
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"TorchSGD: momentum must be in [0, 1], got {momentum}")
        if not 0.0 <= dampening <= 1.0:
            raise ValueError(f"TorchSGD: dampening must be in [0, 1], got {dampening}")
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"TorchSGD: weight_decay must be >= 0, got {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("TorchSGD: nesterov needs momentum > 0 and dampening 0 (as torch)")
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        self.reduce_gradients = None
        with keras.name_scope(self.name, caller=self):
            self._momentum = keras.Variable(
                momentum, name="momentum", dtype=keras.config.floatx(), trainable=False
            )
        self._track_variable(self._momentum)

    @property
    def momentum(self):
        """The momentum variable (assign a float to change it between steps)."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"TorchSGD: momentum must be in [0, 1], got {value}")
        if self.nesterov and value <= 0:
            raise ValueError("TorchSGD: nesterov needs momentum > 0")
        self._momentum.assign(value)

    def build(self, variables):
        """Create one momentum buffer per trained weight."""
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = self.add_optimizer_variables(variables, "momentum_buffer")
        follow_layouts(self.momentum_buffers, variables)

    def _apply_weight_decay(self, variables):
        # Keras decays weights decoupled (w -= lr*wd*w, before the step); torch SGD adds
        # wd*w to the gradient before the momentum, which update_step does instead.
        return

    def update_step(self, gradient, variable, learning_rate):
        """Apply one torch-SGD step to ``variable``."""
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        if self.weight_decay and self._use_weight_decay(variable):
            g = ops.add(g, ops.multiply(ops.cast(self.weight_decay, dtype), variable))
        mu = ops.cast(self._momentum, dtype)
        buf = self.momentum_buffers[self._get_variable_index(variable)]
        if self.dampening:
            # torch starts the buffer at g (undamped) and skips it entirely at momentum 0.
            first = ops.equal(self.iterations, 0)
            new_buf = ops.where(first, g, ops.add(ops.multiply(mu, buf), (1.0 - self.dampening) * g))
            step = ops.where(ops.equal(mu, 0), g, new_buf)
        else:
            # A zero buffer makes the first step buf = g, as torch's initialisation.
            new_buf = ops.add(ops.multiply(mu, buf), g)
            step = new_buf
        self.assign(buf, new_buf)
        if self.nesterov:
            step = ops.add(g, ops.multiply(mu, new_buf))
        self.assign_sub(variable, ops.multiply(lr, step))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self.reduce_gradients is not None:
            grads = self.reduce_gradients(list(grads))
        if (keras.backend.backend() != "torch" or self.dampening
                or (self.weight_decay and not all(map(self._use_weight_decay, trainable_variables)))):
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        return self._torch_foreach_step(grads, trainable_variables, learning_rate)

    def _torch_foreach_step(self, grads, variables, learning_rate):
        """The same update as ``update_step``, batched over all weights with torch's _foreach ops
        (torch backend only; one kernel per op for the whole model, no host sync)."""
        import torch

        with torch.no_grad():
            params = [v.value for v in variables]
            bufs = [self.momentum_buffers[self._get_variable_index(v)].value for v in variables]
            grads = [g.to(p.dtype) for g, p in zip(grads, params)]
            if self.weight_decay:
                grads = torch._foreach_add(grads, params, alpha=float(self.weight_decay))
            mu = self._momentum.value
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, grads)
            step = bufs
            if self.nesterov:
                step = torch._foreach_mul(bufs, mu)
                torch._foreach_add_(step, grads)
            lr = keras.ops.convert_to_tensor(learning_rate)
            torch._foreach_sub_(params, torch._foreach_mul(step, lr))

    def get_config(self):
        """Constructor arguments, with the current learning rate and momentum."""
        config = super().get_config()
        config.update(
            {
                "momentum": float(ops.convert_to_numpy(self._momentum)),
                "dampening": self.dampening,
                "nesterov": self.nesterov,
            }
        )
        return config
