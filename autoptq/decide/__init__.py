"""Choosing: the decision-tree engine and the planner, the candidates a plan offers, the accuracy-aware search,
per-node sensitivity and the measured host cost model. Imports the stages below it."""
