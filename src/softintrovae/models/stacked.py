"""K copies of one network with their parameters stacked, evaluated as one batched network.

A batch of K runs is laid out in blocks of K·B rows, each block run-major: in a (G·K·B, ...) tensor,
rows ``(g·K + k)·B … (g·K + k + 1)·B − 1`` belong to run k (G = 1 for a batch of data; G = 2 for the
methods' [reconstructions; prior samples]). :class:`StackedEncoder` / :class:`StackedDecoder` gather
each run's rows into (K, G·B, ...) and evaluate each run's network on its own rows with
``torch.func.vmap`` over ``functional_call``, so every layer runs as one batched kernel (``bmm``)
instead of K small ones. A stacked parameter has shape (K, ...) and its slice k is run k's parameter.

The methods reduce a batch by its mean, so a loss over K·B rows is the mean of the K runs' losses
and its gradient is 1/K of each run's own. A gradient hook multiplies it back by K: every run then
gets exactly its own gradient, and an elementwise optimizer (Adam) over the stacked parameters makes
each run's own update. Networks with batch statistics (BatchNorm) mix rows and are refused.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Decoder, Encoder, latents_of, num_classes_of


class _Stacked:
    """What the stacked encoder and decoder share: the stacked parameters and the batched call."""

    def _stack(self, networks: Sequence[nn.Module], rows_per_run: int) -> None:
        if not networks:
            raise ValueError("stacking needs at least one network")
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for n in networks for m in n.modules()):
            raise ValueError("networks with BatchNorm cannot be stacked: batch statistics would mix the runs")
        if any(len(list(n.buffers())) for n in networks):
            raise ValueError("networks with buffers cannot be stacked")
        if num_classes_of(networks[0]):
            raise ValueError("class-conditional networks cannot be stacked")
        self.runs, self.rows_per_run = len(networks), rows_per_run
        params, _ = torch.func.stack_module_state(list(networks))
        self.param_names = list(params)
        for index, name in enumerate(self.param_names):
            stacked = nn.Parameter(params[name].detach().clone())
            # the mean over K·B rows gives each run 1/K of its gradient: restore the run's own
            stacked.register_hook(lambda grad, runs=self.runs: grad * runs)
            self.register_parameter(f"stacked_{index}", stacked)
        self.template = [copy.deepcopy(networks[0]).to("meta")]  # a list: not a submodule

    def stacked_parameters(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"stacked_{i}") for i, name in enumerate(self.param_names)}

    def run_state_dict(self, run: int) -> dict[str, Tensor]:
        """Run ``run``'s parameters, as the state dict of one of the stacked networks."""
        return {name: value[run].detach().clone() for name, value in self.stacked_parameters().items()}

    def _batched(self, rows: Tensor):
        """Each run's network on its own rows: (G·K·B, ...) → output(s) of (G·K·B, ...), same layout."""
        template = self.template[0]
        runs, per_block = self.runs, self.rows_per_run
        groups, remainder = divmod(rows.shape[0], runs * per_block)
        if remainder:
            raise ValueError(f"{rows.shape[0]} rows are not blocks of {runs} runs x {per_block} rows")

        def one_run(params: dict[str, Tensor], inputs: Tensor):
            return torch.func.functional_call(template, params, (inputs,))

        def gather(t: Tensor) -> Tensor:  # (G·K·B, ...) → (K, G·B, ...)
            return t.reshape(groups, runs, per_block, *t.shape[1:]).transpose(0, 1).reshape(runs, groups * per_block, *t.shape[1:])

        def scatter(t: Tensor) -> Tensor:  # (K, G·B, ...) → (G·K·B, ...)
            return t.reshape(runs, groups, per_block, *t.shape[2:]).transpose(0, 1).reshape(-1, *t.shape[2:])

        out = torch.func.vmap(one_run)(self.stacked_parameters(), gather(rows))
        return tuple(scatter(o) for o in out) if isinstance(out, tuple) else scatter(out)


class StackedEncoder(_Stacked, Encoder):
    """K encoders as one: x (G·K·B, ...) → (μ, log σ²), each (G·K·B, z_dim), in blocks of B rows per run."""

    def __init__(self, encoders: Sequence[nn.Module], rows_per_run: int):
        Encoder.__init__(self, latents_of(encoders[0]), num_classes_of(encoders[0]))
        self._stack(encoders, rows_per_run)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._batched(x)


class StackedDecoder(_Stacked, Decoder):
    """K decoders as one: z (G·K·B, z_dim) → x̂ (G·K·B, ...), in blocks of B rows per run."""

    def __init__(self, decoders: Sequence[nn.Module], rows_per_run: int):
        Decoder.__init__(self, latents_of(decoders[0]), num_classes_of(decoders[0]))
        self._stack(decoders, rows_per_run)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self._batched(z)
