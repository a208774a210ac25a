"""Fused recurrences (Triton). Not written yet: ``available()`` is False, so ``backend='auto'``
uses the reference loop for the normalized variants."""


def available() -> bool:
    return False
