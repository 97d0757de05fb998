"""Entropy estimation models and the LM compressor (brief entropy.md)."""
