"""torch's SGD and AdamW as Keras optimizers (every backend), with per-weight learning-rate scales and
weight-decay exemptions (``odir_core.training.param_groups``)."""

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


class ParamGroups:
    """Per-weight learning-rate scale and weight decay, as torch's param groups, for the optimizers below
    (not saved with the optimizer: the trainer sets them from the model each run), and ``reduce_gradients``
    (not saved): a function applied to the list of gradients before each step, e.g. the mean over the
    processes of a data-parallel run."""

    reduce_gradients = None
    _groups: dict = {}

    def set_param_groups(self, groups) -> None:
        """``groups``: (variable, lr_scale, decays) per weight; a weight left out keeps scale 1 and decays."""
        self._groups = {self._var_key(variable): (float(scale), bool(decays)) for variable, scale, decays in groups}

    @property
    def grouped(self) -> bool:
        """Whether some weight has a learning-rate scale other than 1 or no weight decay."""
        return any(group != (1.0, True) for group in self._groups.values())

    def lr_scale(self, variable) -> float:
        """The learning-rate factor of ``variable`` (1 unless set)."""
        return self._groups.get(self._var_key(variable), (1.0, True))[0]

    def _use_weight_decay(self, variable):
        return self._groups.get(self._var_key(variable), (1.0, True))[1] and super()._use_weight_decay(variable)

    def _reduced(self, grads):
        return grads if self.reduce_gradients is None else self.reduce_gradients(list(grads))


@keras.saving.register_keras_serializable(package="keras_odir")
class TorchSGD(ParamGroups, keras.optimizers.Optimizer):
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
    Param groups and ``reduce_gradients``: :class:`ParamGroups` (with groups, the torch backend's batched
    ``_foreach`` step gives way to the per-weight one).
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
        lr = ops.multiply(ops.cast(learning_rate, dtype), self.lr_scale(variable))
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
        grads = self._reduced(grads)
        if (keras.backend.backend() != "torch" or self.dampening or self.grouped
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
            if lr.device.type == "cpu":  # read without a device sync: one pass per weight, as torch's SGD
                torch._foreach_add_(params, step, alpha=-lr.item())
            else:  # the learning rate stays on the device: two batched passes, no host sync
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


# Not keras.optimizers.AdamW: it adds epsilon before the bias correction, so its steps are not torch's.
@keras.saving.register_keras_serializable(package="keras_odir")
class TorchAdamW(ParamGroups, keras.optimizers.Optimizer):
    """``torch.optim.AdamW`` as a Keras optimizer (``amsgrad=False``, ``maximize=False``).

    Per weight ``w`` with gradient ``g`` at step ``t`` (1, 2, ...), torch's update::

        w = w * (1 - lr * weight_decay)                   # decoupled decay, before the step
        m = m + (1 - beta_1) * (g - m);  v = beta_2 * v + (1 - beta_2) * g * g
        w = w - lr / (1 - beta_1**t) * m / (sqrt(v) / sqrt(1 - beta_2**t) + epsilon)

    Keras' AdamW adds epsilon to sqrt(v) before the bias correction (lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    * m / (sqrt(v) + epsilon)) and decays with the unscaled learning rate, so it differs from torch.
    ``learning_rate`` is a variable (assign it between steps) or a ``LearningRateSchedule`` of the step; param
    groups and ``reduce_gradients``: :class:`ParamGroups`.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8, weight_decay=0.01, name=None,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        for label, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"TorchAdamW: {label} must be in [0, 1), got {beta}")
        if not epsilon > 0:
            raise ValueError(f"TorchAdamW: epsilon must be > 0, got {epsilon}")
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"TorchAdamW: weight_decay must be >= 0, got {weight_decay}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def build(self, variables):
        """Create the two running averages of each trained weight."""
        if self.built:
            return
        super().build(variables)
        self.exp_avgs, self.exp_avg_sqs = self.add_optimizer_variables(variables, ["exp_avg", "exp_avg_sq"])
        follow_layouts(self.exp_avgs, variables)
        follow_layouts(self.exp_avg_sqs, variables)

    def _apply_weight_decay(self, variables):
        # Keras decays with the optimizer's learning rate; torch with each group's, which update_step does.
        return

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        return super()._backend_update_step(self._reduced(grads), trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        """Apply one torch-AdamW step to ``variable``."""
        dtype = variable.dtype
        lr = ops.multiply(ops.cast(learning_rate, dtype), self.lr_scale(variable))
        g = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        if self.weight_decay and self._use_weight_decay(variable):
            self.assign(variable, ops.multiply(variable, ops.subtract(1.0, ops.multiply(lr, self.weight_decay))))
        index = self._get_variable_index(variable)
        m, v = self.exp_avgs[index], self.exp_avg_sqs[index]
        self.assign_add(m, ops.multiply(ops.subtract(g, m), 1.0 - self.beta_1))
        self.assign(v, ops.add(ops.multiply(v, self.beta_2), ops.multiply(ops.square(g), 1.0 - self.beta_2)))
        correction1 = ops.subtract(1.0, ops.power(ops.cast(self.beta_1, dtype), step))
        correction2 = ops.sqrt(ops.subtract(1.0, ops.power(ops.cast(self.beta_2, dtype), step)))
        denominator = ops.add(ops.divide(ops.sqrt(v), correction2), self.epsilon)
        self.assign_sub(variable, ops.multiply(ops.divide(lr, correction1), ops.divide(m, denominator)))

    def get_config(self):
        """Constructor arguments."""
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config
