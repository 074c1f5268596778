"""Number formats the AI 100 stores and moves: OCP MX (MXFP6, MXINT8) encoders, decoders and their ONNX form."""
