"""engines/onnx"""
