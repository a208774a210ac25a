"""Normalized recurrent layers: ``NormLSTM`` and ``NormRNN`` with the variants of
``bnrnn.nn.variants``, their normalization modules, and population-statistics re-estimation.
``population=M`` runs M independent layers as one (docs/population.md)."""
from bnrnn.nn.lstm import NormLSTM
from bnrnn.nn.norms import (NoNorm, SeqBatchNorm, SeqLayerNorm, batch_statistics,
                             update_population_statistics)
from bnrnn.nn.rnn import NormRNN
from bnrnn.nn.variants import VARIANTS

__all__ = ["NormLSTM", "NormRNN", "NoNorm", "SeqBatchNorm", "SeqLayerNorm", "VARIANTS", "batch_statistics",
           "update_population_statistics"]
