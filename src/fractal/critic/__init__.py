"""The soft verifier: a critic that predicts whether a candidate passes its tests."""
