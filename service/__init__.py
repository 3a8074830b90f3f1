"""The online scoring service: FastAPI + Redis behaviour store + onnxruntime serving graph."""
