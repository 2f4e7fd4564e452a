"""ONNX op types grouped by role, named once for every module that asks what kind of node it is looking at.

A set that only one module uses for a meaning of its own stays with that module (graph.py's MAC-free data movement,
device_rules.py's TFLite same-scale kernels). This module sits in `model`, the lowest package that needs the groups,
so that every package above can import it too.
"""

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
"""Ops that run subgraphs: the work is in their branches (one per call) or their body (once per iteration)."""
CONV_OPS = frozenset({"Conv", "ConvTranspose"})
"""Convolutions: a weight with one filter per output channel, into which a following Add or BatchNormalization can
fold."""
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
"""Recurrent cells: gate weights applied at every time step."""
DENSE_OPS = ("MatMul", "Gemm")
"""Dense layers: a weight matrix applied to every row of the input (in the order recipes list them)."""
WEIGHT_BOUND_OPS = frozenset({*DENSE_OPS, *RECURRENT_OPS, "Attention"})
"""Ops whose cost is reading their weights (dense layers, recurrent cells, fused attention), not their MACs."""
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
"""The pair that marks a quantized tensor in a QDQ model."""
SHAPE_OPS = frozenset({"Shape", "Size"})
"""Ops that read only the shape of their input, never its values."""
OUTPUT_TAIL_OPS = frozenset({"Concat", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
"""Ops that join or move values on their way to a graph output: a detector's boxes and scores concatenated and
reshaped into one tensor (see `autoptq.model.graph.output_tail`)."""
