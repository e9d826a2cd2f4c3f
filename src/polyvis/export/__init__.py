"""Conversions between polyvis model directories and other formats.

- `polyvis.export.llava`: a one-encoder polyvis model -> a transformers LLaVA checkpoint.
- `polyvis.export.omnifusion`: an OmniFusion checkpoint layout -> a polyvis model directory.
"""
