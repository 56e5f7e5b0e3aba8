"""What the integer graph is written as: the tuple, the exported files (bin/txt/C source), ONNX,
golden vectors."""
