"""Import every loss module so each registers itself (imported lazily by the registry)."""
from . import dpo, sft, beta_dpo, madpo, dpop, cal_dpo, simpo, orpo, others, gate, length, fdpo, wpo  # noqa: F401
