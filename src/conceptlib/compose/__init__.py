"""Composing prompts: parsing, name resolution, compatibility, the token budget,
loading many embeddings into a pipeline at once, generation, blends and exports for
each UI's prompt syntax. Base models come from :mod:`conceptlib.models`."""
