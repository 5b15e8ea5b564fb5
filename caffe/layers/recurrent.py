"""Recurrent layers: LSTMUnit, and the sequence layers RNN and LSTM.

Caffe builds RNN and LSTM by unrolling an internal net over the T time steps and exposing the
parameters of that net as the layer's blobs. Here the same mathematics is computed directly: one
matrix product maps the inputs of all time steps to the gate (or hidden) dimension up front, then a
loop over T applies the recurrence with vectorised torch operations.

The learnable blobs are those of Caffe's unrolled net, in its layer order, so that caffemodels
interoperate (H = num_output, D = x.count(2), Ds = x_static.count(1)):

* LSTM: W_xc (4H x D), b_c (4H), [W_xc_static (4H x Ds)], W_hc (4H x H)
* RNN:  W_xh (H x D), b_h (H), [W_xh_static (H x Ds)], W_hh (H x H), W_ho (H x H), b_o (H)

Gate order inside the 4H axis is (input, forget, output, cell candidate).

Behaviour kept from Caffe:

* ``cont`` (T x N) multiplies h_{t-1} (and, inside the LSTM unit, the forget term of c_{t-1});
  it gets no gradient.
* Without ``expose_hidden`` the final state of one forward pass is the initial state of the next
  (zero before the first pass); gradients never cross passes. When N changes, the state is read
  from Caffe's reused buffer: the first N streams survive a shrink, and a buffer that must grow
  starts from zeros.
* With ``expose_hidden`` the initial states are extra bottoms and the final states extra tops, but,
  as in Caffe's unrolled net, no gradient reaches the initial-state bottoms and diffs arriving at
  the final-state tops are ignored.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from caffe.blob import Shape
from caffe.layer import BatchSizeFixed, ExportForward, Layer, register
from caffe.proto import caffe_pb2 as pb

log = logging.getLogger("caffe")

State = tuple[torch.Tensor, ...]


# ---------------------------------------------------------------------------- LSTM unit
class _LSTMUnitFunction(torch.autograd.Function):
    """One LSTM cell update with Caffe's backward.

    ``keep`` (cont, broadcastable against c_prev) scales the forget gate: f = keep * sigmoid(f').
    Caffe differentiates f as if it were a plain sigmoid output (df/df' = f (1 - f)); for binary
    ``keep`` that is the exact derivative, for other values it is Caffe's rule, reproduced here.
    """

    @staticmethod
    def forward(ctx: Any, c_prev: torch.Tensor, gates: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = c_prev.shape[-1]
        i, f, o = torch.sigmoid(gates[..., : 3 * hidden]).split(hidden, dim=-1)
        f = f * keep
        g = torch.tanh(gates[..., 3 * hidden :])
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        h = o * tanh_c
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, h

    @staticmethod
    def backward(ctx: Any, c_diff: torch.Tensor, h_diff: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        c_total = c_diff + h_diff * o * (1 - tanh_c * tanh_c)
        c_prev_diff = c_total * f if ctx.needs_input_grad[0] else None
        gates_diff = None
        if ctx.needs_input_grad[1]:
            gates_diff = torch.cat(
                (
                    c_total * g * i * (1 - i),
                    c_total * c_prev * f * (1 - f),
                    h_diff * tanh_c * o * (1 - o),
                    c_total * i * (1 - g * g),
                ),
                dim=-1,
            )
        return c_prev_diff, gates_diff, None


def lstm_unit(c_prev: torch.Tensor, gates: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, h) from c_{t-1} (..., H), gate inputs (..., 4H) and cont broadcastable to (..., H)."""
    c, h = _LSTMUnitFunction.apply(c_prev, gates, keep.detach())
    return c, h


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """Bottoms c_prev (1 x N x H), gate inputs (1 x N x 4H), cont (1 x N); tops c and h (1 x N x H)."""

    exact_num_bottom, exact_num_top = 3, 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        c_prev, gates = bottom[0], bottom[1]
        names = ("c_prev", "gates", "cont")
        for name, shape, axes in zip(names, bottom, (3, 3, 2), strict=True):
            if len(shape) != axes:
                raise self.shape_error(f"bottom '{name}' must have {axes} axes, got shape {shape}")
            if shape[0] != 1:
                raise self.shape_error(f"bottom '{name}' must hold a single timestep (first axis 1), got shape {shape}")
            if shape[1] != c_prev[1]:
                raise self.shape_error(
                    f"bottom '{name}' shape {shape} does not match c_prev shape {c_prev} in the number of streams"
                )
        if gates[2] != 4 * c_prev[2]:
            raise self.shape_error(
                f"gate input shape {gates} must have 4 * {c_prev[2]} = {4 * c_prev[2]} channels "
                f"for c_prev shape {c_prev}"
            )
        return [c_prev, c_prev]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        c_prev, gates, cont = bottom
        c, h = lstm_unit(c_prev, gates, cont.unsqueeze(-1))
        return [c, h]


# ---------------------------------------------------------------------------- sequence layers
class RecurrentLayer(Layer):
    """Shared machinery of RNN and LSTM: inputs, parameters up to the recurrent weight, the loop.

    Subclasses set ``num_gates`` (rows of the input transform per output unit) and ``state_names``
    (the recurrent state, hidden first), and implement ``step`` (one time step) and, if needed,
    ``add_output_params``/``output``.
    """

    traceable = False  # per-call state or data-dependent shapes: never compiled

    num_gates: ClassVar[int] = 1
    state_names: ClassVar[tuple[str, ...]] = ("h",)

    def __init__(self, param: pb.LayerParameter) -> None:
        super().__init__(param)
        self.expose_hidden = bool(param.recurrent_param.expose_hidden)
        # Caffe: x, cont, [x_static], then the exposed initial states; out, then the final states.
        self.min_bottom = 2 + self._num_exposed
        self.max_bottom = 3 + self._num_exposed
        self.exact_num_top = 1 + self._num_exposed
        self.num_output = 0
        self.static_input = False
        self.input_dim = 0
        self.static_dim = 0
        self._state_buffers: list[torch.Tensor] | None = None

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    # ------------------------------------------------------------------ set-up
    @property
    def _num_exposed(self) -> int:
        return len(self.state_names) if self.expose_hidden else 0

    def layer_setup(self, bottom: list[Shape]) -> None:
        rp = self.layer_param.recurrent_param
        if rp.num_output <= 0:
            raise self.error(f"recurrent_param.num_output must be positive, got {rp.num_output}")
        self.num_output = rp.num_output
        self.static_input = len(bottom) > 2 + self._num_exposed
        self._check_sequence(bottom)
        self.input_dim = math.prod(bottom[0][2:])
        self.static_dim = math.prod(bottom[2][1:]) if self.static_input else 0
        rows = self.num_gates * self.num_output
        self.add_param((rows, self.input_dim), rp.weight_filler)
        self.add_param((rows,), rp.bias_filler)
        if self.static_input:
            self.add_param((rows, self.static_dim), rp.weight_filler)
        self.add_param((rows, self.num_output), rp.weight_filler)
        self.add_output_params(rp)

    def add_output_params(self, rp: pb.RecurrentParameter) -> None:
        """Blobs that follow the recurrent weight (none by default)."""

    @property
    def _recurrent_weight_index(self) -> int:
        return 3 if self.static_input else 2

    def _check_sequence(self, bottom: list[Shape]) -> tuple[int, int]:
        x, cont = bottom[0], bottom[1]
        if len(x) < 2:
            raise self.shape_error(f"bottom 'x' must have at least 2 axes (timesteps, streams, ...), got shape {x}")
        if len(cont) != 2:
            raise self.shape_error(f"bottom 'cont' must have exactly 2 axes (timesteps, streams), got shape {cont}")
        if cont != x[:2]:
            raise self.shape_error(
                f"bottom 'cont' shape {cont} must equal the first two axes (timesteps, streams) of x shape {x}"
            )
        if x[0] < 1:
            raise self.shape_error(f"bottom 'x' has no timesteps (shape {x})")
        if self.static_input:
            xs = bottom[2]
            if len(xs) < 1 or xs[0] != x[1]:
                raise self.shape_error(
                    f"bottom 'x_static' shape {xs} must start with the {x[1]} streams of x shape {x}"
                )
        return x[0], x[1]

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        timesteps, streams = self._check_sequence(bottom)
        x = bottom[0]
        if math.prod(x[2:]) != self.input_dim:
            raise self.shape_error(
                f"bottom 'x' shape {x} has {math.prod(x[2:])} inputs per step; "
                f"the layer was set up for {self.input_dim} (weights {self.blobs[0].shape})"
            )
        if self.static_input and math.prod(bottom[2][1:]) != self.static_dim:
            raise self.shape_error(
                f"bottom 'x_static' shape {bottom[2]} has {math.prod(bottom[2][1:])} inputs per stream; "
                f"the layer was set up for {self.static_dim} (weights {self.blobs[2].shape})"
            )
        state_shape = (1, streams, self.num_output)
        first = 3 if self.static_input else 2
        for name, shape in zip(self.state_names, bottom[first:], strict=False):
            if shape != state_shape:
                raise self.shape_error(f"bottom '{name}_0' shape {shape} must be {state_shape}")
        return [(timesteps, streams, self.num_output)] + [state_shape] * self._num_exposed

    # ------------------------------------------------------------------ recurrence
    def step(self, inputs: torch.Tensor, keep: torch.Tensor, state: State) -> State:
        """One time step: ``inputs`` (N x gates) already hold x_t's and x_static's transforms."""
        raise NotImplementedError

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """The top from all hidden states (T x N x H); default: the hidden states themselves."""
        return hidden

    def reset(self) -> None:
        """Caffe's Reset: zero the state carried between forward passes."""
        if self._state_buffers is not None:
            with torch.no_grad():
                for buf in self._state_buffers:
                    buf.zero_()

    def _carried_state(self, streams: int, like: torch.Tensor) -> State:
        size = streams * self.num_output
        buffers = self._state_buffers
        if buffers is None or buffers[0].numel() < size:
            return tuple(like.new_zeros(streams, self.num_output) for _ in self.state_names)
        return tuple(b[:size].to(like).view(streams, self.num_output).clone() for b in buffers)

    def _keep_state(self, final: State) -> None:
        size = final[0].numel()
        with torch.no_grad():
            buffers = self._state_buffers
            if buffers is None or buffers[0].numel() < size:
                # Caffe reallocates a blob that grows (fresh memory is zero).
                buffers = [s.new_zeros(size) for s in final]
            buffers = [b.to(s) for b, s in zip(buffers, final, strict=True)]
            for buf, s in zip(buffers, final, strict=True):
                buf[:size].copy_(s.reshape(-1))
            self._state_buffers = buffers

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x, cont = bottom[0], bottom[1].detach()
        timesteps, streams = cont.shape
        inputs = F.linear(x.reshape(timesteps, streams, -1), self.param_tensor(0), self.param_tensor(1))
        if self.static_input:
            inputs = inputs + F.linear(bottom[2].reshape(streams, -1), self.param_tensor(2))
        if self.expose_hidden:
            # Caffe's unrolled net computes no gradient for its initial-state inputs.
            first = 3 if self.static_input else 2
            state = tuple(s.detach().reshape(streams, self.num_output) for s in bottom[first:])
        else:
            state = self._carried_state(streams, inputs)
        keep = cont.unsqueeze(-1)
        hidden = []
        for t in range(timesteps):
            state = self.step(inputs[t], keep[t], state)
            hidden.append(state[0])
        top = self.output(torch.stack(hidden))
        if self.layer_param.recurrent_param.debug_info:
            log.info("    [Forward] Layer %s, top blob 0 data: %g", self.name, float(top.detach().abs().mean()))
        if not self.expose_hidden:
            self._keep_state(state)
            return [top]
        # Final states: data only; Caffe ignores diffs arriving here.
        return [top] + [s.detach().reshape(1, streams, self.num_output) for s in state]


@register("RNN")
class RNNLayer(RecurrentLayer):
    """Elman RNN: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o); the top is o (T x N x num_output)."""

    num_gates = 1
    state_names = ("h",)

    def add_output_params(self, rp: pb.RecurrentParameter) -> None:
        self.add_param((self.num_output, self.num_output), rp.weight_filler)  # W_ho
        self.add_param((self.num_output,), rp.bias_filler)  # b_o

    def step(self, inputs: torch.Tensor, keep: torch.Tensor, state: State) -> State:
        w_hh = self.param_tensor(self._recurrent_weight_index)
        return (torch.tanh(inputs + F.linear(keep * state[0], w_hh)),)

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        k = self._recurrent_weight_index
        return torch.tanh(F.linear(hidden, self.param_tensor(k + 1), self.param_tensor(k + 2)))


@register("LSTM")
class LSTMLayer(RecurrentLayer):
    """LSTM: gates = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static], then the
    LSTM unit; the top is h (T x N x num_output)."""

    num_gates = 4
    state_names = ("h", "c")

    def step(self, inputs: torch.Tensor, keep: torch.Tensor, state: State) -> State:
        h_prev, c_prev = state
        gates = inputs + F.linear(keep * h_prev, self.param_tensor(self._recurrent_weight_index))
        c, h = lstm_unit(c_prev, gates, keep)
        return h, c


@register("Lstm")
class JunhyukLstmLayer(LSTMLayer):
    """junhyukoh/caffe-lstm's ``Lstm`` as senlinuc/caffe_ocr carries it (``lstm_param``): a (T, N, I) sequence
    in, (T, N, num_output) out; blobs W_i (4H x I), W_h (4H x H), b (4H), the gates in LSTM's order.

    Without a second bottom every forward starts from zero states. A second bottom, the continuation
    indicators of a single stream (T values, the fork reads ``clip[t + n]``, meaningful for N = 1 only), makes
    the state carry over from the previous forward, as the LSTM's ``cont``: a zero indicator drops h_{t-1} and
    the forget term; as in the fork, W_h's gradient still counts that step's h_{t-1}.
    ``clipping_threshold`` > 0 bounds the gradient of every step's gate inputs to that magnitude.
    """

    export_traceable = True  # without continuation: one LSTM operator (export_forward)

    def __init__(self, param: pb.LayerParameter) -> None:
        super().__init__(param)
        self.min_bottom, self.max_bottom, self.exact_num_top = 1, 2, 1
        self.clipping = 0.0
        self.continued = False  # this forward has continuation indicators

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    @property
    def _recurrent_weight_index(self) -> int:
        return 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        lp = self.layer_param.lstm_param
        if lp.num_output <= 0:
            raise self.error(f"lstm_param.num_output must be positive, got {lp.num_output}")
        self.num_output = int(lp.num_output)
        self.clipping = float(lp.clipping_threshold)
        if len(bottom[0]) < 3:
            raise self.shape_error(f"bottom 0 must be (T, N, I), got shape {tuple(bottom[0])}")
        self.input_dim = math.prod(bottom[0][2:])
        rows = 4 * self.num_output
        self.add_param((rows, self.input_dim), lp.weight_filler)
        self.add_param((rows, self.num_output), lp.weight_filler)
        self.add_param((rows,), lp.bias_filler)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        x = bottom[0]
        if len(x) < 3 or x[0] < 1 or math.prod(x[2:]) != self.input_dim:
            raise self.shape_error(
                f"bottom 0 must be (T, N, {self.input_dim}) (weights {self.blobs[0].shape}), got shape {tuple(x)}"
            )
        if len(bottom) > 1:
            if x[1] != 1:
                raise self.shape_error(
                    f"a continuation bottom needs a single stream (the fork reads clip[t + n]), got shape {tuple(x)}"
                )
            if math.prod(bottom[1]) != x[0]:
                raise self.shape_error(f"bottom 1 must hold {x[0]} continuation indicators, got {tuple(bottom[1])}")
        return [(x[0], x[1], self.num_output)]

    def step(self, inputs: torch.Tensor, keep: torch.Tensor, state: State) -> State:
        h_prev, c_prev = state
        if self.continued:
            # the value of W_h (keep * h); W_h's gradient from the whole h (the fork's), h's only where kept
            h_prev = keep * h_prev + ((1 - keep) * h_prev).detach()
            recurrent = F.linear(h_prev, self.param_tensor(1))
            gates = inputs + recurrent - ((1 - keep) * recurrent).detach()
        else:  # the states start at zero: nothing to drop
            gates = inputs + F.linear(h_prev, self.param_tensor(1))
        if self.clipping > 0 and gates.requires_grad:
            bound = self.clipping
            gates.register_hook(lambda g: g.clamp(-bound, bound))
        c, h = lstm_unit(c_prev, gates, keep)
        return h, c

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        steps, streams = x.shape[0], x.shape[1]
        inputs = F.linear(x.reshape(steps, streams, -1), self.param_tensor(0), self.param_tensor(2))
        self.continued = len(bottom) > 1
        if self.continued:
            keep = (bottom[1].detach().reshape(steps, streams, 1) != 0).to(inputs.dtype)
            state = self._carried_state(streams, inputs)
        else:
            keep = torch.ones(steps, streams, 1, dtype=inputs.dtype, device=inputs.device)
            state = tuple(inputs.new_zeros(streams, self.num_output) for _ in self.state_names)
        hidden = []
        for t in range(steps):
            state = self.step(inputs[t], keep[t], state)
            hidden.append(state[0])
        if self.continued:
            self._keep_state(state)
        return [torch.stack(hidden)]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """The forward as one ``torch.lstm`` (an ONNX ``LSTM``): the gates reordered to its (input, forget,
        candidate, output), the bias on its input side; zero initial states of the set-up batch size. A
        continuation bottom (state carried between forwards) has no export form."""
        if self.bottom_shapes is not None and len(self.bottom_shapes) > 1:
            raise self.error("a continuation bottom carries the state from one forward to the next: no export form")
        if dynamic_batch:
            raise BatchSizeFixed("its initial states are made for the set-up batch size")
        h = self.num_output
        order = torch.cat([torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)])

        def lstm(bottom: list[torch.Tensor]) -> list[torch.Tensor]:
            x = bottom[0]
            steps, streams = x.shape[0], x.shape[1]
            w_ih, w_hh, bias = (self.param_tensor(i)[order.to(x.device)] for i in range(3))
            zeros = x.new_zeros(1, streams, h)
            params = [w_ih, w_hh, bias, torch.zeros_like(bias)]
            sequence = x.reshape(steps, streams, -1)
            out, _, _ = torch.lstm(sequence, (zeros, zeros), params, True, 1, 0.0, False, False, False)
            return [out]

        return lstm
