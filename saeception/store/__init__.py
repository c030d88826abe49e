"""Storage: safetensors + JSON artifacts and their paths, the stage cache, URIs and redaction."""
