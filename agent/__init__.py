"""Mixing policies (the ``MixingPolicy`` interface, baselines, the learned agent) and the evaluation
harness that drives :mod:`mixagent.env` with them."""
