"""Judging a candidate: fidelity metrics, verification, and the emulators that run a model under a device's
arithmetic (one module per arithmetic family and tier). Imports the stages below it."""
