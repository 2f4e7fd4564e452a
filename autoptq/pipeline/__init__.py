"""The commands' work, assembled from the stages below: produce (quantize, verify, fall back), replay a
recipe, check a quantized model on a device, and the variants manifest."""
