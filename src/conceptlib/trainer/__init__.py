"""Textual-inversion training: images and their cached latents, prompt templates, the
loop (only the new rows learn), checkpoints and exact resume, samples and reports.
Base models come from :mod:`conceptlib.models`."""
