"""What a device runs: the device's integer graph built from a QDQ model, its integer kernels, and the
deployable `.tflite` file written from that graph. Imports `devices`, `model` and `io`."""
