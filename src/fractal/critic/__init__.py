"""The soft verifier: a critic that predicts whether a candidate passes its tests.

Its rooms, in the order a candidate goes through them:
- inputs.py: what the critic reads (prompt and code, tokenized) and the one batch padding (pad_batch);
- backbone.py: loading the encoder (the packaged MiniLM, a path or a hub id);
- embed.py: frozen embeddings, cached on disk; features.py: the head critic's features on them;
- folds.py: which problems each fold fits on, validates on and scores;
- config.py: CriticConfig, what critic.json holds, written by training and read by scoring;
- model.py: the critic model: the head, the fine-tuned backbone's wrapper, building either
  from the config, device and precision;
- train.py: the training loop of one fold; crossfit.py: cross-fitting and exporting the critic;
- scorer.py: a trained critic loaded from its directory, scoring candidates.
"""
