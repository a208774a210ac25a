"""bnrnn: Batch Normalized Recurrent Neural Networks, reproduced and extended.

Laurent et al. 2016 (input-only BN), Cooijmans et al. 2016 (recurrent BN) and
Ba et al. 2016 (LayerNorm), side by side on PTB, framewise speech and the
appendix grid search. See README.md for the map of the code.
"""

__version__ = "0.1.0"
