"""Models: each returns a :class:`bnrnn.engine.StepOutput` per batch and knows its metrics."""
