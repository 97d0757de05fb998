"""CALM — confident adaptive language modeling (Schuster et al. 2022): early-exit training
(exits.py), per-token early-exit decoding with state propagation (decode.py), and Learn-then-Test
calibration of the exit threshold (calibrate.py)."""
