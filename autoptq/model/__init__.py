"""The model and its data: loading an ONNX file safely into a networkx graph, binding open shapes, preparing a
copy for the quantizers, representative data validated against the inputs, running float activations, and the op
types grouped by role (ops.py). Imports `io`."""
