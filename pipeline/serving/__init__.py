"""The logged model and what runs it. The runtimes are named here, apart from the Segmenter, so
the command line can check a runtime without loading PyTorch."""

RUNTIMES = ("torch", "onnx")  # PyTorch, or the model's ONNX export in ONNX Runtime
