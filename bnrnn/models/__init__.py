"""Models: each returns a :class:`bnrnn.contracts.StepOutput` per batch and knows its metrics
(the contract, and the ``data.dims`` its constructor must accept: ``bnrnn/contracts.py``)."""
