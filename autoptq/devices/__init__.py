"""What a device is and what it makes of a model: hardware profiles, the converter's canonical rewrites, op
coverage, the latency and size estimates, and the re-audit of a quantized graph against the device's rules.
Imports `model` and `io`."""
