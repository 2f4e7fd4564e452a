"""Judging a candidate: fidelity metrics, a model run on this machine and timed (runner), the emulators that run a
model under a device's arithmetic (one module per arithmetic family and tier), the one evaluator and what its
evaluations say, and the verification policy over it. Imports the stages below it."""
