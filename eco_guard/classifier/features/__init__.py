"""What the heads read: the sentence encoder's blocks (run by PyTorch or ONNX Runtime,
its corpus features cached on disk, every text of a fit embedded once) and the lexical
block over the forget examples' words."""
