"""Embedding files and where they live.

- :mod:`.formats`: detect, read and write every layout; the canonical ``Embedding``;
  safe pickle; strict safetensors; PNG embeddings.
- :mod:`.store`: the content-addressed blob store.
- :mod:`.library`: the ``Library`` service (import, export, tag, edit, rename,
  remove, verify), over :mod:`.folders` (folder walking, sidecars), :mod:`.pending` (a
  file turned into an entry ready to commit), :mod:`.importer` (the import loop and
  its summary), :mod:`.fields` (checks of editable fields), :mod:`.originals` (the
  imported file kept and written back by exports in its layout) and :mod:`.upkeep`
  (verify, gc).
- :mod:`.hub`: Hub sync, one module per concern.
- :mod:`.samples`: sample embeddings made by code for the demo and the tests.
"""
