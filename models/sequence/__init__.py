"""The bundled toy sequence models: a nested-bracket language with exact token annotations
(:mod:`.language`), an LSTM language model on it (:mod:`.lstm`), a tiny attention
encoder-decoder that matches brackets (:mod:`.seq2seq`), and their training script
(:mod:`.train`)."""
