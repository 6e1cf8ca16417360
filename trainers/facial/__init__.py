"""Trainer 1: FLAME-space expressive facial animation (emotion binding + latent diffusion)."""
