"""Cal-DPO: calibrated DPO (Xiao et al., NeurIPS 2024; official code tengxiao1/Cal-DPO)."""

from __future__ import annotations

import torch.nn.functional as F

from ._common import check, positive, preference_output
from .base import LossOutput, PreferenceOutputs
from .registry import register


@register(
    "cal-dpo",
    paper="https://arxiv.org/abs/2412.14516",
    summary="Cal-DPO: -log sigma(r_w - r_l) + squared calibration of r_w to +1/(2 beta) and r_l to -1/(2 beta)",
)
def cal_dpo(outputs: PreferenceOutputs, *, beta: float = 0.1, calibration_weight: float = 1.0) -> LossOutput:
    """Cal-DPO, per example:

        L = -log sigma(r_w - r_l) + c [(r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2]

    with ``c = calibration_weight`` (1 = the formula in METHODS.md; the official Zephyr script uses 0.5).
    Note the contrastive term has no beta; beta only sets the calibration targets (0.1 for Pythia,
    0.001 for Zephyr in the official settings). Step-0 value: ln 2 + 2 c (1/(2 beta))^2.
    Implicit rewards are reported as ``beta * r`` like every reference-based loss.
    """
    positive("cal-dpo", beta=beta)
    check(calibration_weight >= 0, "cal-dpo", f"calibration_weight must be >= 0, got {calibration_weight}")
    r_w, r_l = outputs.logratios("cal-dpo")
    target = 1.0 / (2.0 * beta)
    calib = (r_w - target) ** 2 + (r_l + target) ** 2
    losses = -F.logsigmoid(r_w - r_l) + calibration_weight * calib
    return preference_output(losses, r_w, r_l, beta, metrics={"calibration": calib.detach().mean()})
