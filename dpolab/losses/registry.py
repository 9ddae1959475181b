"""Loss registry and the weighted-list combination.

Every loss module registers its function with :func:`register`. Users combine losses as a list of
specs, e.g. ``[{"name": "dpo", "weight": 1.0}, {"name": "sft", "weight": 0.2}]``; a spec may carry
``params`` (the loss's keyword arguments) and wrappers that act on any suitable loss:

* ``ld_alpha`` (LD-DPO's length desensitisation of the policy and reference log-probs, :mod:`.length`),
* ``gate`` (Gate-DPO's gradient transform on the rejected response, :mod:`.gate`),
* ``divergence`` (f-DPO's f'(pi/pi_ref) in place of the log-ratios, :mod:`.fdpo`),
* ``weighting`` (WPO's detached per-pair weight on the loss, :mod:`.wpo`),

applied in that order: ld_alpha, gate and divergence transform the loss's inputs, weighting its per-pair losses.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from torch import Tensor

from .base import LOCAL, DistContext, LossConfigError, LossInfo, LossOutput, PreferenceOutputs

_REGISTRY: Dict[str, LossInfo] = {}


def register(
    name: str,
    *,
    paper: str,
    summary: str,
    needs_reference: bool = True,
    needs_token_logps: bool = False,
    needs_token_log_sum_sq_probs: bool = False,
    needs_ref_token_split: bool = False,
    needs_extras: Sequence[str] = (),
    stateful: bool = False,
    batch_level: bool = False,
):
    """Decorator: add a loss function (or, for stateful losses, a class) to the registry. A ``batch_level`` loss (or a
    stateful one) is called with a ``dist`` keyword: the :class:`DistContext` of the batch its statistics cover."""

    def deco(fn):
        if name in _REGISTRY:
            raise RuntimeError(f"loss '{name}' registered twice")
        target = fn.__init__ if stateful else fn
        sig = inspect.signature(target)
        defaults = {
            k: p.default
            for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and k not in ("self", "outputs", "dist")
        }
        _REGISTRY[name] = LossInfo(
            name=name,
            fn=fn,
            paper=paper,
            summary=summary,
            needs_reference=needs_reference,
            needs_token_logps=needs_token_logps,
            needs_token_log_sum_sq_probs=needs_token_log_sum_sq_probs,
            needs_ref_token_split=needs_ref_token_split,
            needs_extras=tuple(needs_extras),
            stateful=stateful,
            batch_level=batch_level or stateful,
            defaults=defaults,
        )
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers every loss module.
    from . import _all  # noqa: F401


def list_losses() -> List[LossInfo]:
    """All registered losses, sorted by name."""
    _ensure_loaded()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_loss(name: str) -> LossInfo:
    _ensure_loaded()
    key = name.strip().lower().replace("_", "-")
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise LossConfigError(f"unknown loss '{name}'{hint}; valid losses: {', '.join(sorted(_REGISTRY))}")


def _check_params(info: LossInfo, params: Mapping[str, Any]) -> None:
    unknown = [k for k in params if k not in info.defaults]
    if unknown:
        valid = ", ".join(sorted(info.defaults)) or "(none)"
        raise LossConfigError(f"loss '{info.name}' has no parameter {', '.join(map(repr, unknown))}; valid: {valid}")
    # a numeric hyper-parameter is a finite number: NaN or inf is refused here, when the config is built, instead of at
    # the first training step (after the run folder was made); each loss checks its own ranges (beta > 0, ...) itself
    for k, v in params.items():
        default = info.defaults[k]
        if isinstance(default, (int, float)) and not isinstance(default, bool) and default is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise LossConfigError(f"loss '{info.name}': {k} must be a finite number, got {v!r}")


@dataclass
class LossSpec:
    """One entry of the weighted list."""

    name: str
    weight: float = 1.0
    params: Dict[str, Any] = field(default_factory=dict)
    gate: Optional[Dict[str, Any]] = None
    weighting: Optional[Any] = None
    divergence: Optional[Any] = None
    ld_alpha: Optional[float] = None

    @classmethod
    def parse(cls, raw: Union[str, Mapping[str, Any], "LossSpec"]) -> "LossSpec":
        if isinstance(raw, LossSpec):
            return raw
        if isinstance(raw, str):
            return cls(name=raw)
        if not isinstance(raw, Mapping):
            raise LossConfigError(f"a loss spec must be a name or a mapping, got {type(raw).__name__}")
        allowed = {"name", "weight", "params", "gate", "weighting", "divergence", "ld_alpha"}
        extra = set(raw) - allowed
        if extra:
            raise LossConfigError(f"loss spec has unknown key(s) {sorted(extra)}; valid: {sorted(allowed)}")
        if "name" not in raw:
            raise LossConfigError("loss spec is missing 'name'")
        weight = raw.get("weight", 1.0)
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise LossConfigError(f"loss '{raw['name']}': weight must be a number, got {weight!r}") from None
        return cls(
            name=str(raw["name"]),
            weight=weight,
            params=dict(raw.get("params") or {}),
            gate=raw.get("gate"),
            weighting=raw.get("weighting"),
            divergence=raw.get("divergence"),
            ld_alpha=raw.get("ld_alpha"),
        )


@dataclass(frozen=True)
class Wrappers:
    """A component's wrappers besides the gate (see the module docstring); None where the spec has none."""

    ld: Any = None  # length.LDConfig
    divergence: Any = None  # fdpo.FDivergence
    weighting: Any = None  # wpo.WPOWeighting

    @classmethod
    def parse(cls, spec: LossSpec, info: LossInfo) -> "Wrappers":
        from .fdpo import FDivergence
        from .length import LDConfig
        from .wpo import WPOWeighting

        return cls(
            ld=LDConfig.parse(spec.ld_alpha, info) if spec.ld_alpha is not None else None,
            divergence=FDivergence.parse(spec.divergence, info) if spec.divergence is not None else None,
            weighting=WPOWeighting.parse(spec.weighting, info) if spec.weighting not in (None, False) else None,
        )


class CompositeLoss:
    """A weighted sum of registered losses, each optionally wrapped (LD-DPO, Gate-DPO, f-divergence, WPO).

    Holds the state of stateful losses (beta-DPO) so the engine can checkpoint it via
    :meth:`state_dict` / :meth:`load_state_dict`.
    """

    def __init__(self, specs: Sequence[Union[str, Mapping[str, Any], LossSpec]]):
        from .gate import GateConfig  # local import: gate registers nothing, it wraps

        if not specs:
            raise LossConfigError("at least one loss is required")
        self.specs = [LossSpec.parse(s) for s in specs]
        self.components: List[tuple[str, LossSpec, LossInfo, Any, Optional[GateConfig]]] = []
        self.wrappers: List[Wrappers] = []  # parallel to components
        seen: Dict[str, int] = {}
        for spec in self.specs:
            info = get_loss(spec.name)
            _check_params(info, spec.params)
            gate = GateConfig.parse(spec.gate, info) if spec.gate else None
            self.wrappers.append(Wrappers.parse(spec, info))
            fn = info.fn(**spec.params) if info.stateful else info.fn
            label = info.name if info.name not in seen else f"{info.name}_{seen[info.name]}"
            seen[info.name] = seen.get(info.name, 0) + 1
            self.components.append((label, spec, info, fn, gate))

    @property
    def needs_reference(self) -> bool:
        return any(info.needs_reference for _, _, info, _, _ in self.components)

    @property
    def batch_level(self) -> bool:
        """Whether a component takes statistics over the whole optimiser step (beta-DPO, AOT)."""
        return any(info.batch_level for _, _, info, _, _ in self.components)

    @property
    def needs_token_logps(self) -> bool:
        """Per-token policy log-probs and masks (``policy_*_token_logps``, ``*_token_mask``)."""
        return any(
            info.needs_token_logps or gate is not None or w.ld is not None or w.weighting is not None
            for (_, _, info, _, gate), w in zip(self.components, self.wrappers)
        )

    @property
    def needs_token_log_sum_sq_probs(self) -> bool:
        """WPO: per-token ``log sum_v p_v^2`` of the policy (``policy_*_token_log_sum_sq_probs``), with the token
        log-probs."""
        return any(
            info.needs_token_log_sum_sq_probs or w.weighting is not None
            for (_, _, info, _, _), w in zip(self.components, self.wrappers)
        )

    @property
    def needs_ref_token_split(self) -> bool:
        """LD-DPO: the reference per token (``ref_*_token_logps``) or over each pair's shared length
        (``ref_*_shared_logps``)."""
        return any(
            info.needs_ref_token_split or w.ld is not None
            for (_, _, info, _, _), w in zip(self.components, self.wrappers)
        )

    @property
    def needs_extras(self) -> tuple[str, ...]:
        out: List[str] = []
        for _, _, info, _, _ in self.components:
            out.extend(x for x in info.needs_extras if x not in out)
        return tuple(out)

    def __call__(
        self, outputs: PreferenceOutputs, dist: DistContext = LOCAL
    ) -> tuple[Tensor, Dict[str, Any], List[LossOutput]]:
        """Returns (scalar objective, metrics, per-component outputs).

        ``dist`` is the distributed context that batch-level (stateful) losses take their statistics over."""
        total: Optional[Tensor] = None
        metrics: Dict[str, Any] = {}
        parts: List[LossOutput] = []
        for (label, spec, info, fn, gate), wrap in zip(self.components, self.wrappers):
            inp = outputs
            if wrap.ld is not None:
                inp, ld_metrics = wrap.ld.apply(inp, f"loss '{label}' with ld_alpha")
                metrics.update({f"{label}/{k}": v for k, v in ld_metrics.items()})
            if gate is not None:
                inp, gate_metrics = gate.apply(inp)
                metrics.update({f"{label}/{k}": v for k, v in gate_metrics.items()})
            if wrap.divergence is not None:
                inp = wrap.divergence.apply(inp, label)
            if info.stateful:
                out = fn(inp, dist=dist)
            else:
                out = fn(inp, dist=dist, **spec.params) if info.batch_level else fn(inp, **spec.params)
            if wrap.weighting is not None:
                out = wrap.weighting.apply(outputs, out, f"loss '{label}' with weighting 'wpo'")
            parts.append(out)
            value = out.reduced()
            total = spec.weight * value if total is None else total + spec.weight * value
            metrics[f"loss/{label}"] = value.detach()
            metrics.update({f"{label}/{k}": v for k, v in out.metrics.items()})
        assert total is not None
        metrics["loss"] = total.detach()
        return total, metrics, parts

    def state_dict(self) -> Dict[str, Any]:
        return {label: fn.state_dict() for label, _, info, fn, _ in self.components if info.stateful}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for label, _, info, fn, _ in self.components:
            if info.stateful and label in state:
                fn.load_state_dict(state[label])


def compute_loss(
    loss: Union[str, Mapping[str, Any], Sequence[Union[str, Mapping[str, Any]]]],
    outputs: PreferenceOutputs,
    **params: Any,
) -> LossOutput:
    """Functional entry point: ``compute_loss("dpo", outputs, beta=0.1)`` -> per-example losses + metrics.

    ``loss`` may be one name (with ``params`` as keyword arguments) or a weighted list of specs, in which
    case the per-example losses are the weighted sum of each component's (masked) per-example losses.
    """
    if isinstance(loss, str):
        specs = [LossSpec(name=loss, params=params)]
    elif isinstance(loss, Mapping):
        specs = [LossSpec.parse(loss)]
    else:
        if params:
            raise LossConfigError("keyword parameters apply to a single named loss; put them in each spec's 'params'")
        specs = [LossSpec.parse(s) for s in loss]
    comp = CompositeLoss(specs)
    _, metrics, parts = comp(outputs)
    if len(parts) == 1:
        out = parts[0]
        out.metrics = {**metrics, **out.metrics}
        return out
    # Per-example losses whose plain mean equals the composite objective: a masked component (beta-DPO)
    # averages over its kept pairs, so its kept losses are scaled by B / kept and its dropped ones are 0.
    per_ex = sum(spec.weight * _mean_preserving(p) for spec, p in zip(comp.specs, parts))
    return LossOutput(losses=per_ex, metrics=metrics)


def _mean_preserving(out: LossOutput) -> Tensor:
    if out.mask is None:
        return out.losses
    m = out.mask.to(out.losses.dtype)
    return out.losses * m * (m.numel() / m.sum().clamp_min(1.0))
