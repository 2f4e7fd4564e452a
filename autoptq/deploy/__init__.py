"""What a device runs: the device's integer graph built from a QDQ model and lowered to standard ONNX for the exact
tier (`intgraph`, op by op in `ops`), its integer kernels, and the deployable `.tflite` file written from that
graph. Imports `devices`, `model` and `io`."""
