"""Exporting SCRFD to TFLite: ONNX edits, the int8 recipe, parity checks, the files an export writes."""
