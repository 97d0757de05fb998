"""Masked diffusion LMs: the objective, the one sampling loop and its policies (fixed-length LLaDA, threshold, DAEDAL)."""
