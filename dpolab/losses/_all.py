"""Import every loss module so each registers itself (imported lazily by the registry)."""

from . import beta_dpo, cal_dpo, dpo, dpop, fdpo, gate, length, madpo, orpo, others, sft, simpo, wpo  # noqa: F401
