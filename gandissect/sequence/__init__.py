"""Sequence models the LSTMVis / Seq2Seq-Vis way: token sequences as 1 x T feature maps for the
dissection engine (probe.py, dissect.py), interventions over token spans (intervene.py),
hidden-state hypothesis matching (match.py), the attention encoder-decoder's traces
(seq2seq.py) and the LSTMVis-style page (view.py)."""
