"""The ``conceptlib`` command: click groups, one module per command group, rich output.

A thin layer over the Python API; commands are loaded lazily (``cli/main.py``) so
``--help``, ``search``, ``show`` and ``list`` never import torch."""
