"""Inference API: EfficientNet-Lite0 ImageNet classification on the CPU with ONNX Runtime.

``image`` and ``scoring`` are the pure core (bytes -> tensor, logits -> top-k); ``export`` turns
the packaged PyTorch weights into a cached ONNX graph once (torch only there); ``model`` serves
it; ``api`` is the HTTP adapter.
"""
