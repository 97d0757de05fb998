"""Variational masked diffusion (brief vmd.md): model.py (the VMD and its MDM baseline),
objective.py (loss and evaluation bound), sample.py (the latent conditioner and the samplers)."""
