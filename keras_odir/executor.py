"""Running a built Keras functional model from a precomputed plan, without Keras' per-layer call machinery.

A functional model's call walks its graph and calls every layer through ``Layer.__call__``, which converts
the arguments, opens name and autocast scopes, checks the build and the input specs, resolves ``training``
and keeps every activation of the call in one dict until the end. On the torch backend, run eagerly, that
machinery costs about as much as the kernels themselves on small inputs (launch-bound work).

``GraphPlan`` turns a functional model once into a list of steps: the operations in topological order (the
layers of nested functional models, such as the dual model's ``backbone`` and ``head``, spliced in), where
each input of each step comes from, and after which step each tensor is last used. ``GraphPlan.run`` calls
every layer's ``call()`` directly and keeps only what ``Layer.__call__`` does that changes the numbers: the
``training`` flag (for layers whose ``call`` takes it), the cast of floating inputs to the layer's input dtype
under a mixed-precision policy (``autocast``) and the autocast scope in which variables are read, and the cast
of a nested model's inputs to its ``Input`` dtypes. BatchNorm's moving statistics are updated inside its
``call`` (assign), so they are kept. Each tensor is dropped after its last use. Same kernels in the same
order: the outputs (and their gradients) are bit-identical to ``model(x)``'s.

``PlannedModel`` is the functional model that runs its plan where that pays: on the torch backend, eagerly
(not inside a ``torch.compile`` of its caller), on tensors; ``planned(model, compile=True)`` runs the plan itself
under ``torch.compile``. Elsewhere (jax and tensorflow, which trace the call once into a
compiled function anyway; symbolic calls) it is Keras' own functional call. ``planned(model)`` is a
``PlannedModel`` view of a built model: the same layers and weights, shared, not copied.
"""

from __future__ import annotations

import inspect

import keras
from keras.src.models.functional import Functional  # the class a functional keras.Model is

_ABSENT = object()  # no autocast scope open


def _is_tensor(x) -> bool:
    return isinstance(x, keras.KerasTensor)


def _graph_nodes(model: Functional):
    """(operation, positional args, keyword args, outputs) of every node of ``model``'s graph in an order in
    which each node's inputs come before it (deepest first, as Keras' ``Function._run_through_graph``), input
    nodes left out; args, kwargs and outputs hold the symbolic ``KerasTensor``s of the graph.

    The one place that reads Keras' semi-private graph structure: ``_nodes_by_depth`` and each node's
    ``arguments`` (args/kwargs as recorded when the model was built) and ``outputs``."""
    nodes = model._nodes_by_depth
    for depth in sorted(nodes, reverse=True):
        for node in nodes[depth]:
            if node.operation is None or node.is_input:
                continue
            yield node.operation, node.arguments.args, node.arguments.kwargs, list(node.outputs)


def _takes_training(op) -> bool:
    try:
        return "training" in inspect.signature(op.call).parameters
    except (TypeError, ValueError):
        return False


def _next_scope(layer, scope):
    """The autocast scope (its dtype, or ``_ABSENT``) in which ``Layer.__call__`` runs ``layer``'s call,
    inside ``scope``."""
    if not isinstance(layer, keras.layers.Layer):
        return scope
    if scope is not _ABSENT:
        if not layer.autocast or not keras.backend.is_float_dtype(layer.compute_dtype):
            return None
        return layer.compute_dtype if scope != layer.compute_dtype else scope
    return layer.compute_dtype if layer.compute_dtype != layer.variable_dtype else _ABSENT


class _Slot:
    """A placeholder for the tensor in slot ``index`` (in a step's argument template)."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def _template(structure, slots: dict[int, int]):
    """``structure`` (args or kwargs of a node) with each KerasTensor replaced by its ``_Slot``."""
    return keras.tree.map_structure(lambda x: _Slot(slots[id(x)]) if _is_tensor(x) else x, structure)


def _fill(template, values, convert):
    """``template`` with each slot replaced by ``convert`` of its tensor in ``values``."""
    if isinstance(template, _Slot):
        return convert(values[template.index])
    if isinstance(template, (list, tuple)):
        return type(template)(_fill(t, values, convert) for t in template)
    if isinstance(template, dict):
        return {k: _fill(v, values, convert) for k, v in template.items()}
    return template


def _slot_indices(template) -> list[int]:
    found = []

    def visit(t):
        if isinstance(t, _Slot):
            found.append(t.index)
        elif isinstance(t, (list, tuple)):
            for u in t:
                visit(u)
        elif isinstance(t, dict):
            for u in t.values():
                visit(u)

    visit(template)
    return found


class _Step:
    """One operation of the plan: ``fn(*args, **kwargs)`` with the tensors of ``args``/``kwargs`` read from
    slots, its flat outputs written to ``outputs``; ``chain``: the nested models it sits in, outermost first
    (their autocast scopes)."""

    __slots__ = ("op", "fn", "direct", "args", "kwargs", "single", "training", "cast", "outputs", "chain",
                 "free", "entry_dtype")

    def __init__(self, op, args, kwargs, outputs, chain, *, direct=True, entry_dtype=None):
        self.op = op
        layer = isinstance(op, keras.layers.Layer)
        special = getattr(op, "_remat_mode", None) or getattr(op, "quantization_mode", None) is not None
        self.direct = direct and not special  # remat/quantized layers: Keras' own __call__
        self.fn = op.call if self.direct else op
        self.args, self.kwargs, self.outputs, self.chain = args, kwargs, outputs, chain
        self.single = (len(args) == 1 and isinstance(args[0], _Slot) and not _slot_indices(kwargs))
        self.training = self.direct and _takes_training(op)
        # Layer.__call__ casts floating inputs to the layer's input dtype (autocast); a nested model's
        # entry (entry_dtype) converts its input to the Input's dtype
        self.cast = (op.input_dtype if layer and self.direct and op.autocast
                     and getattr(op, "_convert_input_args", True) else None)
        self.entry_dtype = entry_dtype
        self.free: list[int] = []


def _identity(x):
    return x


class GraphPlan:
    """The plan of a built functional model (see the module's docstring); ``run(inputs, training)`` computes
    what ``model(inputs, training=training)`` does, from inside the model's own ``__call__``."""

    def __init__(self, model: Functional):
        self.model = model
        self.steps: list[_Step] = []
        self._count = 0
        inputs = [self._new_slot() for _ in model.inputs]
        self.input_slots = inputs
        self.output_slots = self._splice(model, inputs, chain=())
        last_use: dict[int, int] = {}
        for i, step in enumerate(self.steps):
            for index in _slot_indices((step.args, step.kwargs)):
                last_use[index] = i
        keep = set(self.output_slots)
        for index, i in last_use.items():
            if index not in keep:
                self.steps[i].free.append(index)
        self._scopes: dict = {}

    def _new_slot(self) -> int:
        self._count += 1
        return self._count - 1

    def _splice(self, model: Functional, input_slots: list[int], chain: tuple) -> list[int]:
        """Append the steps of ``model``'s graph, its inputs in ``input_slots``; returns its output slots."""
        slots = {}
        for tensor, index in zip(model.inputs, input_slots):
            # Functional._standardize_inputs: each input converted to its Input's dtype
            entry = self._new_slot()
            self.steps.append(_Step(_identity, (_Slot(index),), {}, [entry], chain, direct=False,
                                    entry_dtype=tensor.dtype))
            slots[id(tensor)] = entry
        for op, args, kwargs, outputs in _graph_nodes(model):
            if any(id(x) not in slots for x in keras.tree.flatten((args, kwargs)) if _is_tensor(x)):
                continue  # not computable from these inputs (Keras skips it too)
            if self._splicable(op, args, kwargs):
                inner = [slots[id(x)] for x in keras.tree.flatten(args[0])]
                out = self._splice(op, inner, chain + (op,))
                for tensor, index in zip(outputs, out):
                    slots[id(tensor)] = index
                continue
            out = [self._new_slot() for _ in outputs]
            self.steps.append(_Step(op, _template(tuple(args), slots), _template(dict(kwargs), slots), out,
                                    chain))
            for tensor, index in zip(outputs, out):
                slots[id(tensor)] = index
        return [slots[id(x)] for x in model.outputs]

    @staticmethod
    def _splicable(op, args, kwargs) -> bool:
        """A nested functional model (its own call, not a subclass's) called on its inputs alone."""
        if not isinstance(op, Functional) or type(op).call not in (Functional.call, PlannedModel.call):
            return False
        if len(args) != 1 or any(_is_tensor(x) for x in keras.tree.flatten(kwargs)):
            return False
        flat = keras.tree.flatten(args[0])
        return (len(flat) == len(op.inputs) and all(_is_tensor(x) for x in flat)
                and (len(flat) == 1 or type(args[0]) is type(op._inputs_struct)))

    def _step_scopes(self, outer):
        """Per step: the autocast scope dtype to open around it, or ``_ABSENT`` where it runs in ``outer``."""
        key = outer if outer is _ABSENT else ("scope", outer)
        scopes = self._scopes.get(key)
        if scopes is None:
            scopes = []
            for step in self.steps:
                scope = outer
                for layer in step.chain:
                    scope = _next_scope(layer, scope)
                if step.direct:  # a layer called through Keras' __call__ opens its own scope
                    scope = _next_scope(step.op, scope)
                scopes.append(_ABSENT if scope is outer or scope == outer else scope)
            self._scopes[key] = scopes
        return scopes

    def run(self, flat_inputs, training=None):
        """The model's flat outputs for its flat inputs (already standardised, as ``Functional.call`` does)."""
        current = keras.src.backend.get_autocast_scope()
        return self.execute(flat_inputs, training, self._step_scopes(_ABSENT if current is None else current.dtype))

    def compile(self) -> None:
        """Run the steps under ``torch.compile`` from now on (the scopes, cached per autocast scope, are looked
        up outside it: filling that cache inside would make every new entry a recompilation)."""
        import torch

        # the layers already hand torch channels_last views; inductor's own layout choice re-lays them out (ResNet50
        # launch-bound: 68 copies, a quarter of a compiled training step, 0.62 s a step against 0.35 s without)
        self.execute = torch.compile(self.execute, options={"layout_optimization": False})

    def execute(self, flat_inputs, training, scopes):
        """The steps, each in its autocast scope of ``scopes`` (``_step_scopes``)."""
        values = [None] * self._count
        for index, x in zip(self.input_slots, flat_inputs):
            values[index] = x
        dtypes = {}

        def dtype_of(x):
            d = dtypes.get(x.dtype)
            if d is None:
                d = dtypes[x.dtype] = keras.backend.standardize_dtype(x.dtype)
            return d

        def cast(x, dtype):
            if dtype is not None and keras.ops.is_tensor(x):
                d = dtype_of(x)
                if d != dtype and keras.backend.is_float_dtype(d):
                    return keras.ops.cast(x, dtype)
            return x

        for step, scope in zip(self.steps, scopes):
            if step.entry_dtype is not None:
                x = values[step.args[0].index]
                if keras.ops.is_tensor(x) and dtype_of(x) != step.entry_dtype:
                    x = keras.ops.cast(x, step.entry_dtype)
                values[step.outputs[0]] = x
                continue
            if step.single:
                args = (cast(values[step.args[0].index], step.cast),)
                kwargs = dict(step.kwargs) if step.kwargs else {}
            else:
                def convert(x, dtype=step.cast):
                    return cast(x, dtype)

                args, kwargs = _fill(step.args, values, convert), _fill(step.kwargs, values, convert)
            if step.training and training is not None:
                kwargs["training"] = training
            if scope is _ABSENT:
                outputs = step.fn(*args, **kwargs)
            else:
                with keras.src.backend.AutocastScope(scope):
                    outputs = step.fn(*args, **kwargs)
            if len(step.outputs) == 1:
                values[step.outputs[0]] = outputs if not isinstance(outputs, (list, tuple, dict)) else \
                    keras.tree.flatten(outputs)[0]
            else:
                for index, y in zip(step.outputs, keras.tree.flatten(outputs)):
                    values[index] = y
            for index in step.free:
                values[index] = None
        return [values[index] for index in self.output_slots]


def _eager_torch(flat_inputs) -> bool:
    """Torch tensors, run eagerly (not traced by ``torch.compile``)."""
    import torch

    if torch.compiler.is_compiling():
        return False
    return all(isinstance(x, torch.Tensor) for x in flat_inputs)


@keras.saving.register_keras_serializable(package="keras_odir")
class PlannedModel(Functional):
    """A functional model whose call runs its ``GraphPlan`` on the torch backend, eagerly; Keras' functional
    call elsewhere. Saved and loaded as any functional model (its config is a functional model's)."""

    def call(self, inputs, training=None, mask=None, **kwargs):
        if mask is not None and all(m is None for m in keras.tree.flatten(mask)):
            # Layer.__call__ hands tensor inputs (fit's and predict's batches) a mask per input, None for each
            mask = None
        if keras.backend.backend() != "torch" or mask is not None or kwargs:
            return super().call(inputs, training=training, mask=mask, **kwargs)
        flat = self._standardize_inputs(inputs)  # as Functional.call
        if not _eager_torch(flat):
            return super().call(inputs, training=training, mask=mask)
        plan = self.__dict__.get("_graph_plan")
        if plan is None:
            plan = GraphPlan(self)
            if self.__dict__.get("_compile"):
                plan.compile()
            self.__dict__["_graph_plan"] = plan  # not a tracked attribute (no weights of its own)
        outputs = plan.run(flat, training)
        packed = keras.tree.pack_sequence_as(self._outputs_struct, outputs)
        return packed[0] if isinstance(packed, (list, tuple)) and len(packed) == 1 else packed


def planned(model: keras.Model, *, compile: bool = False) -> keras.Model:  # noqa: A002 - as the trainers' flag
    """A ``PlannedModel`` of ``model``'s layers and weights (shared, not copied), named as it; ``model``
    itself if it is one already, or if it is not a functional model (returned as it is). ``compile``: on the
    torch backend its plan runs under ``torch.compile`` (one graph, no breaks: ``tests/test_compile.py``)."""
    if not isinstance(model, Functional):
        return model
    if not isinstance(model, PlannedModel):
        model = PlannedModel(model.input, model.output, name=model.name)
    if compile and model.__dict__.get("_compile") is not True:
        model.__dict__.update(_compile=True, _graph_plan=None)
    return model
